// The official Segment Node SDK against a hub, for the event stream tests (tests/all/streams.rs):
// an identify, orders (one big, one small), an order with `integrations: {All: false}`, one
// with `{All: false, "Facebook Conversions API": true}`, and a page, then flush. The orders are
// named ORDER_EVENT (default `Order Completed`); with EXTRA_EVENT, one more track of that name
// is sent before the page (the transform tests: a name a tracking plan renames, one it drops).
//
//   node node-stream.mjs HUB_URL WRITE_KEY USER_ID [ORDER_EVENT [EXTRA_EVENT]]
import { Analytics } from '@segment/analytics-node'

const [hub, writeKey, userId, orderEvent = 'Order Completed', extraEvent] = process.argv.slice(2)
const client = new Analytics({ writeKey, host: hub, maxEventsInBatch: 20, flushInterval: 100 })
const errors = []
client.on('error', (e) => errors.push(String(e?.reason ?? e)))
// What a browser checkout page would carry, server-side: Meta wants the page URL and the
// user agent for website events; GA4 the client id the gtag cookie holds.
const context = {
  ip: '203.0.113.9',
  userAgent: 'Mozilla/5.0 (X11; Linux x86_64)',
  page: { url: 'https://shop.example.com/checkout' },
}
const order = (id, total, integrations) =>
  client.track({
    userId,
    messageId: id,
    event: orderEvent,
    properties: { order_id: id, total, currency: 'eur', ga_client_id: `1197.${userId}`, fbp: 'fb.1.1765000000000.1098115397' },
    context,
    ...(integrations ? { integrations } : {}),
  })

client.identify({ userId, traits: { email: 'Ada@Example.com', plan: 'pro' } })
order(`${userId}-big`, 42.5)
order(`${userId}-small`, 2.5)
order(`${userId}-none`, 99.5, { All: false })
order(`${userId}-meta-only`, 77.5, { All: false, 'Facebook Conversions API': true })
if (extraEvent) client.track({ userId, messageId: `${userId}-extra`, event: extraEvent, context })
client.page({ userId, name: 'Checkout', context })
await client.closeAndFlush({ timeout: 10000 })
if (errors.length) throw new Error(errors.join('; '))
console.log(JSON.stringify({ ok: true }))
