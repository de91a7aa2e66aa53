-- wrk script for the beacon benchmark: every POST /v1/events carries N fresh, valid touchpoints.
--
--   wrk -t1 -c16 -d10s --latency -s bench/touchpoints.lua http://127.0.0.1:PORT/v1/events -- N TAG
--
-- N is the batch size (events per request); TAG is 8 hex digits that make this run's event_ids
-- unique across runs. Within a run, the last UUID group is a counter, so no id repeats.
-- The shape matches bench/run.py's sample_event: page_view, ts/sent_ts now, anonymous and
-- session ids, a page URL with UTM parameters, a referrer, and a browser context.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local batch = 1
local tag = "00000000"
local counter = 0
local threads = {}
non200 = 0 -- global, so that done() can read it from each thread

local agents = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
}
local campaigns = {
  { "google", "cpc" },
  { "newsletter", "email" },
  { "facebook", "social" },
  { "bing", "cpc" },
}

local template = '{"event_id":"%s-%04x-4%03x-%04x-%012x","type":"page_view","ts":"%s","sent_ts":"%s",'
  .. '"anonymous_id":"anon-%06d","session_id":"sess-%06d",'
  .. '"page":{"url":"https://shop.example.com/products/%d?utm_source=%s&utm_medium=%s&utm_campaign=spring_sale",'
  .. '"referrer":"https://www.google.com/","title":"Product %d"},'
  .. '"context":{"user_agent":"%s","locale":"en-US","timezone":"Europe/Berlin","screen":"1920x1080","library":"t.js/1.0.0"}}'

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  batch = tonumber(args[1]) or 1
  tag = args[2] or tag
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

local function event(now)
  counter = counter + 1
  local customer = math.random(0, 99999)
  local product = math.random(1, 5000)
  local campaign = campaigns[(customer % #campaigns) + 1]
  return string.format(
    template,
    tag,
    math.random(0, 0xffff),
    math.random(0, 0xfff),
    0x8000 + math.random(0, 0x3fff),
    counter,
    now,
    now,
    customer,
    customer,
    product,
    campaign[1],
    campaign[2],
    product,
    agents[(customer % #agents) + 1]
  )
end

function request()
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local parts = {}
  for i = 1, batch do
    parts[i] = event(now)
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (tonumber(thread:get("non200")) or 0)
  end
  io.write(string.format("BENCH-SUMMARY requests=%d non200=%d\n", summary.requests, bad))
end
