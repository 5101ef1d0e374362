// The official Node server SDKs, from their npm packages, against a hub: identify with traits,
// track, group and alias, then flush. Driven by tests/all/tracking.rs.
//
//   node node-sdks.mjs segment|rudderstack HUB_URL WRITE_KEY USER_ID
import { Analytics as SegmentAnalytics } from '@segment/analytics-node'
import RudderAnalytics from '@rudderstack/rudder-sdk-node'

const [sdk, hub, writeKey, userId] = process.argv.slice(2)
const traits = { email: `${userId}@example.com`, plan: 'enterprise', name: 'Ada Node' }
const anonymousId = `anon-${userId}`

if (sdk === 'segment') {
  // @segment/analytics-node posts batches to HOST/v1/batch.
  const client = new SegmentAnalytics({ writeKey, host: hub, maxEventsInBatch: 10, flushInterval: 200 })
  const errors = []
  client.on('error', (e) => errors.push(String(e?.reason ?? e)))
  client.track({ anonymousId, event: 'Viewed Pricing', properties: { plan: 'enterprise' } })
  client.identify({ userId, traits })
  client.track({ userId, event: 'Order Completed', properties: { total: 99.5 } })
  client.group({ userId, groupId: `acme-${userId}`, traits: { name: 'Acme' } })
  client.alias({ userId, previousId: anonymousId })
  await client.closeAndFlush({ timeout: 10000 })
  if (errors.length) throw new Error(errors.join('; '))
} else if (sdk === 'rudderstack') {
  // @rudderstack/rudder-sdk-node posts gzip batches to DATA_PLANE_URL/v1/batch.
  const client = new RudderAnalytics(writeKey, { dataPlaneUrl: hub, flushAt: 10, flushInterval: 200, logLevel: 'error' })
  client.track({ anonymousId, event: 'Viewed Pricing', properties: { plan: 'enterprise' } })
  client.identify({ userId, traits })
  client.track({ userId, event: 'Order Completed', properties: { total: 99.5 } })
  client.group({ userId, groupId: `acme-${userId}`, traits: { name: 'Acme' } })
  client.alias({ userId, previousId: anonymousId })
  await new Promise((ok, fail) => client.flush((err) => (err ? fail(err) : ok())))
} else {
  throw new Error(`unknown SDK ${sdk}`)
}
console.log(JSON.stringify({ ok: true }))
