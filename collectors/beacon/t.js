/* Tracker web snippet, tracker-js/0.1. Sends touchpoint events to the beacon; see docs/snippet.md. */
(() => {
  const w = window;
  const d = document;
  const nav = navigator;
  if (w.tracker && w.tracker.loaded) return; // loaded twice: keep the first

  const LIBRARY = "tracker-js/0.1";
  const SCHEMA = "tracker/touchpoint/1-0-0";
  const SESSION_MS = 30 * 60 * 1000; // a session ends after 30 minutes without events
  const FLUSH_MS = 1000; // by default events wait this long to be sent together
  const MAX_EVENTS = 500; // the beacon's limits for one request
  const MAX_BYTES = 1024 * 1024;
  const BEACON_BYTES = 60 * 1024; // sendBeacon and keepalive fetch refuse larger bodies
  const MAX_QUEUE = 2000; // while the beacon is unreachable, older events are dropped past this
  const AID = "tracker_aid";
  const SESSION = "tracker_session";
  const UID = "tracker_uid";
  const CONSENT = "tracker_consent";
  const UNSENT = "tracker_unsent";

  // Where to send: the script tag's data-endpoint, else the origin the script came from.
  const script = d.currentScript || d.querySelector('script[src*="/t.js"]');
  const endpoint = ((script && script.getAttribute("data-endpoint")) || (script ? new URL(script.src, location.href).origin : "")).replace(/\/+$/, "");
  const autoPages = !script || script.getAttribute("data-auto") !== "false";
  const flushMs = Number(script && script.getAttribute("data-flush-ms")) || FLUSH_MS;

  // Storage: localStorage, falling back to a first-party cookie when it is unavailable.
  const load = (key) => {
    try {
      const value = w.localStorage.getItem(key);
      if (value !== null) return value;
    } catch (_) { /* storage blocked: try the cookie */ }
    const match = d.cookie.match(new RegExp("(?:^|; )" + key + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : null;
  };
  const save = (key, value) => {
    try {
      w.localStorage.setItem(key, value);
      return;
    } catch (_) { /* fall through to the cookie */ }
    const secure = location.protocol === "https:" ? "; Secure" : "";
    d.cookie = `${key}=${encodeURIComponent(value)}; path=/; max-age=63072000; SameSite=Lax${secure}`;
  };
  const forget = (key) => {
    try { w.localStorage.removeItem(key); } catch (_) { /* nothing stored there */ }
    d.cookie = `${key}=; path=/; max-age=0`;
  };
  const loadJson = (key) => {
    try { return JSON.parse(load(key) || "null"); } catch (_) { return null; }
  };

  const uuid = () => {
    if (w.crypto.randomUUID) return w.crypto.randomUUID(); // only in secure contexts
    const b = w.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64; // version 4
    b[8] = (b[8] & 63) | 128; // RFC 4122 variant
    return Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("").replace(/(.{8})(.{4})(.{4})(.{4})/, "$1-$2-$3-$4-");
  };
  const now = () => new Date().toISOString(); // RFC 3339 in UTC with a Z

  // Consent: unset by default (the server's rules apply). Global Privacy Control and Do Not Track
  // always mean marketing: false.
  let consent = loadJson(CONSENT) || {};
  const optedOut = nav.globalPrivacyControl === true || nav.doNotTrack === "1" || w.doNotTrack === "1";
  const analyticsOff = () => consent.analytics === false;
  const consentToSend = () => {
    const sent = { ...consent }; // only ever the booleans the consent command kept
    if (optedOut) sent.marketing = false;
    return Object.keys(sent).length ? sent : undefined;
  };

  const anonymousId = () => {
    let id = load(AID);
    if (!id) save(AID, (id = uuid()));
    return id;
  };

  // A short-link click id is read from the address when a page is entered, and kept by the session.
  const query = () => new URL(location.href).searchParams;
  const clickIdParam = () => query().get("tc_id");
  let landingClickId = clickIdParam();
  // So is the landing's campaign (utm_*), which a number-pool reservation carries.
  const campaignParams = () => {
    const q = query();
    const c = {};
    for (const key of ["source", "medium", "campaign", "term", "content"]) {
      const value = q.get("utm_" + key);
      if (value) c[key === "campaign" ? "name" : key] = value.slice(0, 256);
    }
    return Object.keys(c).length ? c : null;
  };
  let landingCampaign = campaignParams();

  // The session rotates after 30 idle minutes; it keeps the short-link click id it started with.
  const session = () => {
    const t = Date.now();
    let s = loadJson(SESSION);
    if (!s || !s.id || t - s.last > SESSION_MS) s = { id: uuid(), click_id: "" };
    if (landingClickId && landingClickId.length <= 256) s.click_id = landingClickId;
    if (landingCampaign) s.campaign = landingCampaign;
    landingClickId = landingCampaign = null;
    s.last = t;
    save(SESSION, JSON.stringify(s));
    return s;
  };

  const strings = (obj) => {
    // The touchpoint's properties are a string map (numbers and the like become strings),
    // held to the schema's limits: 50 entries, keys of 128 and values of 1024 characters.
    const out = {};
    for (const [k, v] of Object.entries(obj || {}).filter((e) => e[1] != null).slice(0, 50)) {
      out[k.slice(0, 128)] = (typeof v === "object" ? JSON.stringify(v) : String(v)).slice(0, 1024);
    }
    return out;
  };

  let lastUrl = d.referrer;
  const pageInfo = () => ({ url: location.href.slice(0, 4096), referrer: (lastUrl || "").slice(0, 4096), title: d.title.slice(0, 256) });

  const context = () => {
    const ctx = { library: LIBRARY };
    if (nav.language) ctx.locale = nav.language.slice(0, 35);
    try { ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone.slice(0, 64); } catch (_) { /* no Intl */ }
    if (w.screen && w.screen.width) ctx.screen = `${w.screen.width}x${w.screen.height}`; // whole CSS pixels
    return ctx;
  };

  // Build one event and queue it.
  const record = (type, fields) => {
    const event = { event_id: uuid(), schema: SCHEMA, type, ts: now(), page: pageInfo(), context: context() };
    if (!analyticsOff()) {
      // Without analytics consent no identifier is written or sent.
      const s = session();
      event.anonymous_id = anonymousId();
      event.session_id = s.id;
      if (s.click_id) event.click_id = s.click_id;
      const userId = load(UID);
      if (userId) event.user_id = userId;
    }
    const c = consentToSend();
    if (c) event.consent = c;
    for (const [k, v] of Object.entries(fields || {})) {
      if (v === null || v === undefined || v === "") continue;
      event[k] = k === "properties" ? strings(v) : v;
    }
    // The other identifiers were never added; these come from identify's fields.
    if (analyticsOff()) for (const k of ["user_id", "email", "phone"]) delete event[k];
    enqueue([event]);
  };

  // Sending: batches of at most 500 events and 1 MiB, one request at a time, retried with backoff.
  let queue = [];
  let sending = false;
  let timer = 0;
  let failures = 0;
  let batchLimit = MAX_EVENTS;
  const encoder = new TextEncoder();
  const size = (event) => encoder.encode(JSON.stringify(event)).length + 1;

  const enqueue = (events) => {
    queue.push(...events);
    queue = queue.slice(-MAX_QUEUE);
    if (!sending && !timer) timer = setTimeout(flush, queue.length >= MAX_EVENTS ? 0 : flushMs);
  };

  // Take events off the head of the queue up to a byte limit; the chunk always holds at least one.
  const take = (limit) => {
    let bytes = 2;
    let n = 0;
    while (n < queue.length && n < batchLimit) {
      bytes += size(queue[n]);
      if (n > 0 && bytes > limit) break;
      n += 1;
    }
    return queue.splice(0, n);
  };
  const body = (batch) => {
    const sent = now();
    // sent_ts is stamped as the batch leaves, so the collector can correct a wrong device clock.
    return JSON.stringify(batch.map((e) => ({ ...e, sent_ts: sent > e.ts ? sent : e.ts })));
  };

  // A simple request (text/plain, no cookies): no CORS preflight.
  const post = (path, text, keepalive) => fetch(`${endpoint}/v1/${path}`, { method: "POST", body: text, headers: { "Content-Type": "text/plain" }, credentials: "omit", keepalive });

  const retryLater = (batch, seconds) => {
    queue.unshift(...batch);
    failures += 1;
    const backoff = Math.min(300, 2 ** Math.min(failures, 9)) * (0.5 + Math.random() / 2);
    timer = setTimeout(flush, 1000 * (seconds > 0 ? seconds : backoff));
  };

  async function flush() {
    timer = 0;
    if (sending || !queue.length || !endpoint) return;
    sending = true;
    const batch = take(MAX_BYTES);
    const text = body(batch);
    try {
      const response = await post("events", text, encoder.encode(text).length < BEACON_BYTES);
      const status = response.status;
      if (status >= 500 || status === 429) {
        // Retry-After, or the body's retry_after when a cross-origin page cannot read the header.
        retryLater(batch, Number(response.headers.get("Retry-After")) || Number((await response.json().catch(() => ({}))).retry_after));
      } else if (status === 413 && batch.length > 1) {
        queue.unshift(...batch); // too large for this beacon's limits: send it in halves
        batchLimit = Math.ceil(batch.length / 2);
      } else {
        // 2xx: done. 400: the beacon kept the bad events as dead letters and accepted the rest; a
        // resend would fail the same way. Other 4xx cannot succeed either.
        failures = 0;
        batchLimit = MAX_EVENTS;
      }
    } catch (_) {
      retryLater(batch, 0); // a network error: the beacon may never have seen the batch
    } finally {
      sending = false;
      if (queue.length && !timer) timer = setTimeout(flush, 0);
    }
  }

  // When the page goes away, hand everything queued to sendBeacon, which outlives the page. What it
  // refuses is kept and sent on the next page load.
  const flushOnExit = () => {
    clearTimeout(timer);
    timer = 0;
    const kept = [];
    while (queue.length) {
      const chunk = take(BEACON_BYTES);
      // A string goes as text/plain: no CORS preflight.
      if (!(nav.sendBeacon && endpoint && nav.sendBeacon(`${endpoint}/v1/events`, body(chunk)))) kept.push(...chunk);
    }
    if (kept.length) save(UNSENT, JSON.stringify(kept.slice(-MAX_EVENTS)));
  };
  w.addEventListener("pagehide", flushOnExit);
  d.addEventListener("visibilitychange", () => { if (d.visibilityState === "hidden") flushOnExit(); });

  // Page views: on load and whenever a single-page app changes the URL.
  const pageView = (fields) => {
    record("page_view", fields);
    lastUrl = location.href;
  };
  const onUrlChange = () => setTimeout(() => {
    if (location.href === lastUrl) return;
    landingClickId = clickIdParam();
    landingCampaign = campaignParams();
    pageView();
  }, 0);
  for (const method of ["pushState", "replaceState"]) {
    const original = history[method];
    history[method] = function (...args) {
      const result = original.apply(this, args);
      if (autoPages) onUrlChange();
      return result;
    };
  }
  w.addEventListener("popstate", () => { if (autoPages) onUrlChange(); });

  // Number pools: an element marked data-tracker-pool="<pool>" shows a phone number reserved for
  // this visit, so a call to it joins the visit. Without an answer the page's own number stays.
  const reserveNumber = (pool) => {
    if (!endpoint || analyticsOff() || !pool) return Promise.resolve(null);
    const s = session();
    const request = { pool: String(pool), anonymous_id: anonymousId(), session_id: s.id };
    if (s.campaign) request.campaign = s.campaign;
    return post("numbers", JSON.stringify(request)).then((response) => (response.ok ? response.json() : null)).catch(() => null);
  };
  const showNumber = (el, answer) => {
    const format = el.getAttribute("data-tracker-format");
    el.textContent = format === "e164" ? answer.number : answer[format === "international" ? "international" : "national"];
    if (el.tagName === "A") el.setAttribute("href", `tel:${answer.number}`);
    el.setAttribute("data-tracker-number", answer.number);
  };
  const swapNumbers = () => {
    const marked = Array.from(d.querySelectorAll("[data-tracker-pool]"));
    for (const pool of new Set(marked.map((el) => el.getAttribute("data-tracker-pool")))) {
      reserveNumber(pool).then((answer) => {
        if (!answer || !answer.number) return;
        for (const el of marked) if (el.getAttribute("data-tracker-pool") === pool) showNumber(el, answer);
      });
    }
  };

  // The public API: tracker(command, ...arguments).
  const commands = {
    page: (fields) => pageView({ name: fields && fields.name, properties: fields && fields.properties }),
    track: (type, f = {}) => record(type, { name: f.name, properties: f.properties, value: f.value, currency: f.currency, channel: f.channel }),
    identify: (f = {}) => {
      const userId = f.user_id && String(f.user_id);
      if (userId && !analyticsOff()) save(UID, userId);
      record("identify", { user_id: userId, email: f.email, phone: f.phone });
    },
    survey: (f = {}) => {
      const survey = { kind: f.kind, score: typeof f.score === "string" ? Number(f.score) : f.score };
      if (f.comment) survey.comment = String(f.comment).slice(0, 4096);
      record("survey_response", { survey });
    },
    consent: (f = {}) => {
      for (const k of ["analytics", "marketing"]) if (typeof f[k] === "boolean") consent[k] = f[k];
      save(CONSENT, JSON.stringify(consent));
      if (analyticsOff()) for (const k of [AID, SESSION, UID]) forget(k);
    },
    numbers: swapNumbers,
    number: (pool, callback) => reserveNumber(pool).then((answer) => { if (typeof callback === "function") callback(answer); }),
  };
  const tracker = (command, ...args) => {
    const run = commands[command];
    if (run) run(...args);
    else console.warn("tracker: unknown command", command);
  };
  tracker.loaded = true;

  // Calls made before the script loaded: consent first, then the page view, then the rest in order.
  const early = Array.from((w.tracker && w.tracker.q) || [], (a) => Array.from(a));
  w.tracker = tracker;
  early.filter((a) => a[0] === "consent").forEach((a) => tracker(...a));
  const unsent = loadJson(UNSENT);
  if (Array.isArray(unsent) && unsent.length) {
    forget(UNSENT);
    enqueue(unsent);
  }
  if (autoPages) pageView();
  early.filter((a) => a[0] !== "consent").forEach((a) => tracker(...a));
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", swapNumbers);
  else swapNumbers();
})();
