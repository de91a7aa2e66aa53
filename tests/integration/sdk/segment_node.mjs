// Sends a visit with Segment's Node library (@segment/analytics-node) to the beacon in BEACON_URL.
// Used by tests/integration/test_segment_sdks.py; the ids and the write key come from the environment.
import { Analytics } from "@segment/analytics-node";

const { BEACON_URL, WRITE_KEY, ANONYMOUS_ID, USER_ID, EMAIL } = process.env;
const analytics = new Analytics({ writeKey: WRITE_KEY, host: BEACON_URL, flushAt: 1, maxRetries: 2 });
const failures = [];
analytics.on("error", (error) => failures.push(String(error && (error.reason || error.message || error))));

const context = { userAgent: "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)" };
analytics.page({ anonymousId: ANONYMOUS_ID, name: "Pricing", properties: { url: "https://shop.example/pricing?utm_source=news&utm_medium=email" }, context });
analytics.track({ anonymousId: ANONYMOUS_ID, event: "Product Viewed", properties: { sku: "kettle-1" } });
analytics.identify({ userId: USER_ID, traits: { email: EMAIL } });
analytics.alias({ previousId: ANONYMOUS_ID, userId: USER_ID });
analytics.track({ userId: USER_ID, event: "Order Completed", properties: { revenue: 49.9, currency: "eur" } });
await analytics.closeAndFlush({ timeout: 30000 });
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
