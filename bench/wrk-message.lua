-- The wrk load: one fixed text-message webhook of about 700 bytes, a distinct objectId (and
-- timestamp) per request, over 1,000 chats, the token in X-Webhook-Token. Closed loop: use it
-- with one thread (`wrk -t1`), so the counter is unique. At the end it prints one JSON line.
local counter = 0
local token = os.getenv("BENCH_TOKEN") or "bench-token-0123456789abcdef"
-- Set per server, so two runs against one broker never send the same objectId.
local tag = os.getenv("BENCH_TAG") or ""
local text = string.rep("Olá! Gostaria de saber o status do meu pedido, por favor. ", 6)

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Token"] = token

request = function()
  counter = counter + 1
  local id = string.format("wrk%s%010d", tag, counter)
  local body = string.format(
    '{"objectId":"%s","resource":"Message","event":"CREATE","timestamp":%d,' ..
    '"payload":{"chat":{"className":"Chat","objectId":"chat%04d"},"platform":"WAB-OMNICHAT",' ..
    '"status":"INCOMING_RECEIVED","system":false,"type":"TEXT","text":"%s",' ..
    '"createdAt":"2023-04-18T13:47:35.255Z","updatedAt":"2023-04-18T13:47:35.255Z",' ..
    '"objectId":"%s"}}',
    id, 1681825655283 + counter, counter % 1000, text, id)
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"mode":"wrk","requests":%d,"accepted":%d,"seconds":%.3f,"errors":%d,"non2xx":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f,"statuses":{}}\n',
    summary.requests, summary.requests - non2xx, summary.duration / 1e6, failed, non2xx,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000))
end
