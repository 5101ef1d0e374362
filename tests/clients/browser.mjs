// Loads an official browser SDK from its npm package into a page served from its own origin
// (not the hub's), in Debian's headless Chromium driven by playwright-core, and makes the
// calls a website makes. Driven by tests/all/tracking.rs; prints one JSON line:
// {"requests": [every URL the browser asked for], "posts": [{url, status}], "errors": [...]}.
//
//   node browser.mjs SDK MODE HUB_URL PAGE_PORT WRITE_KEY USER_ID
//   SDK: segment (@segment/analytics-next, dist/umd) | rudderstack (@rudderstack/analytics-js,
//   the bundled UMD build: its plugins are inside, so it loads no code from a CDN)
//   MODE: allowed (settings from the hub's /v1/projects/KEY/settings), batching (Segment's
//   batching delivery: /v1/b), disallowed (a page whose origin the source does not take; it
//   also tries navigator.sendBeacon, which gets no preflight)
import { createServer } from 'node:http'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { chromium } from 'playwright-core'

const [sdk, mode, hub, pagePort, writeKey, userId] = process.argv.slice(2)
const require = createRequire(import.meta.url)
const bundle = {
  segment: require.resolve('@segment/analytics-next/dist/umd/index.js'),
  rudderstack: new URL(
    './node_modules/@rudderstack/analytics-js/dist/npm/modern/bundled/umd/index.js',
    import.meta.url
  ).pathname,
}[sdk]
if (!bundle) throw new Error(`unknown SDK ${sdk}`)

const page = `<!doctype html><html><head><title>shop</title>
<script src="/sdk.js"></script></head><body><h1>Shop</h1></body></html>`
const server = createServer((req, res) => {
  if (req.url === '/sdk.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' })
    res.end(readFileSync(bundle))
  } else {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end(page)
  }
})
await new Promise((ok) => server.listen(Number(pagePort), '127.0.0.1', ok))

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // Nothing outside this machine: any other host fails to resolve at once (and is listed).
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ],
})
const out = { requests: [], posts: [], errors: [], result: null }
try {
  const tab = await browser.newPage()
  tab.on('request', (r) => out.requests.push(r.url()))
  tab.on('response', (r) => {
    if (r.request().method() === 'POST') out.posts.push({ url: r.url(), status: r.status() })
  })
  tab.on('requestfailed', (r) => {
    if (r.method() === 'POST')
      out.posts.push({ url: r.url(), status: 0, failure: r.failure()?.errorText })
  })
  tab.on('pageerror', (e) => out.errors.push(String(e)))
  tab.on('console', (m) => m.type() === 'error' && out.errors.push(m.text()))
  await tab.goto(`http://localhost:${pagePort}/`)
  out.result = await tab.evaluate(run, { sdk, mode, hub, writeKey, userId })
  // Wait for the SDK's deliveries (three calls; Segment's batching sends them as one).
  const want = mode === 'batching' ? 1 : 3
  const deadline = Date.now() + (mode === 'disallowed' ? 4000 : 20000)
  while (Date.now() < deadline && out.posts.filter((p) => p.status === 200).length < want) {
    await new Promise((ok) => setTimeout(ok, 100))
  }
} finally {
  await browser.close()
  server.close()
}
console.log(JSON.stringify(out))

// Runs in the page: what a website's code does with each SDK.
async function run({ sdk, mode, hub, writeKey, userId }) {
  const traits = { email: `${userId}@example.com`, plan: 'pro', name: 'Ada Browser' }
  if (sdk === 'segment') {
    const { AnalyticsBrowser } = window.AnalyticsNext
    const options =
      mode === 'batching'
        ? { integrations: { 'Segment.io': { deliveryStrategy: { strategy: 'batching', config: { size: 3, timeout: 300 } } } } }
        : {}
    // The settings a disallowed page cannot read from the hub are given inline, so the SDK
    // still tries to send.
    const settings =
      mode === 'disallowed'
        ? { writeKey, cdnSettings: { integrations: { 'Segment.io': { apiKey: writeKey, apiHost: `${new URL(hub).host}/v1`, protocol: 'http' } }, metrics: { sampleRate: 0 } } }
        : { writeKey, cdnURL: hub }
    const analytics = AnalyticsBrowser.load(settings, options)
    try {
      await Promise.race([analytics, new Promise((_, no) => setTimeout(() => no(new Error('load timed out')), 5000))])
    } catch (e) {
      if (mode !== 'disallowed') throw e
    }
    const calls = [
      analytics.page('Home', { path: '/' }),
      analytics.identify(userId, traits),
      analytics.track('Clicked Buy', { price: 42 }),
    ]
    if (mode !== 'disallowed') await Promise.all(calls)
  } else {
    const ra = new window.rudderanalytics.RudderAnalytics()
    ra.load(writeKey, hub, {
      logLevel: 'ERROR',
      // The source config the SDK would fetch from RudderStack's control plane, inline.
      getSourceConfig: () => ({
        source: {
          id: 'src-web', name: 'web', workspaceId: 'ws-test', enabled: true,
          config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } },
          destinations: [],
        },
      }),
    })
    await new Promise((ok) => ra.ready(ok))
    ra.page('Shop', 'Home', { path: '/' })
    ra.identify(userId, traits)
    ra.track('Clicked Buy', { price: 42 })
  }
  if (mode === 'disallowed') {
    const body = JSON.stringify({ writeKey, userId, event: 'Beacon' })
    return { beacon: navigator.sendBeacon(`${hub}/v1/t`, new Blob([body], { type: 'text/plain' })) }
  }
  return { ok: true }
}
