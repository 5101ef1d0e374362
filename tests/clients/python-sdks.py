"""The official Python server SDKs, from PyPI, against a hub: identify with traits, track,
group and alias, then flush. Driven by tests/all/tracking.rs.

    python python-sdks.py segment|rudderstack HUB_URL WRITE_KEY USER_ID
"""
import json
import sys

sdk, hub, write_key, user_id = sys.argv[1:5]
if sdk == "segment":
    # segment-analytics-python posts batches to HOST/v1/batch.
    import segment.analytics as analytics

    analytics.host = hub
elif sdk == "rudderstack":
    # rudder-sdk-python posts batches to DATA_PLANE_URL/v1/batch, identify traits in
    # context.traits.
    import rudderstack.analytics as analytics

    analytics.dataPlaneUrl = hub
    analytics.host = hub
else:
    raise SystemExit(f"unknown SDK {sdk}")

errors = []
analytics.write_key = write_key
analytics.on_error = lambda error, batch: errors.append(str(error))
anonymous_id = f"anon-{user_id}"
traits = {"email": f"{user_id}@example.com", "plan": "startup", "name": "Ada Python"}
analytics.track(anonymous_id=anonymous_id, event="Viewed Pricing", properties={"plan": "startup"})
analytics.identify(user_id, traits)
analytics.track(user_id, "Order Completed", {"total": 12.5})
analytics.group(user_id, f"acme-{user_id}", {"name": "Acme"})
analytics.alias(anonymous_id, user_id)
analytics.flush()
analytics.shutdown()
if errors:
    raise SystemExit("; ".join(errors))
print(json.dumps({"ok": True}))
