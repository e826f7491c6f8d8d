-- The error shaper of the edge (docs/architecture.md §3). It sits at the head of the HTTP filters, so on
-- the way back it sees each response after the gRPC-JSON transcoder. It is not run for every response:
-- a composite filter creates it only for HTTP (non-gRPC) clients and only when the response headers
-- ask for it (an error status, `x-openai-error` or `x-http-status`; services/runtime/envoy_shaper.py),
-- and a C++ header mutation filter strips the gRPC plumbing of plain successes. So this script sees
-- the response from its headers on, never the request (no envoy_on_request).
--
-- What it does:
--   * a failed RPC: its trailing metadata carries the final OpenAI error JSON (`x-openai-error`)
--     and the HTTP status (`x-http-status`). A failure before the first message is a gRPC
--     trailers-only response, which reaches us as response headers with no body; a failure after
--     the service sent its headers but no message reaches us as headers, a google.rpc.Status body
--     (convert_grpc_status) and trailers. Either way we set the status, make the JSON the whole
--     body and drop the gRPC plumbing; every other header or trailer the service set (retry-after,
--     rate-limit headers) is kept as a response header.
--   * a failed RPC without that metadata (a crash, a status from gRPC itself): the transcoder's
--     status stays and the body becomes a generic OpenAI error for it, never the service's text.
--   * Envoy's own replies are already OpenAI JSON (local_reply_config) and pass unchanged.
--   * a success whose service asks for another status with an `x-http-status` response header (a
--     302) gets it; the gRPC headers are removed and the body streams through unbuffered.
-- Native gRPC clients never meet it.

-- Response headers (and trailers) no HTTP client should see (PLUMBING in envoy_shaper.py too).
local PLUMBING = {
  ["grpc-status"] = true, ["grpc-message"] = true, ["grpc-status-details-bin"] = true,
  ["grpc-accept-encoding"] = true, ["grpc-encoding"] = true,
  ["x-openai-error"] = true, ["x-http-status"] = true,
}

local function is_plumbing(key)
  return PLUMBING[key] or key:sub(1, 8) == "x-envoy-"
end

-- Errors without our metadata (a crash, a status made by gRPC itself) get one of these bodies, by
-- the status the transcoder derived from the gRPC code: the service's own text never shows.
local function error_json(message, error_type, code)
  local code_json = code and ('"' .. code .. '"') or "null"
  return '{"error":{"message":"' .. message .. '","type":"' .. error_type .. '","param":null,"code":'
    .. code_json .. '}}'
end
local INVALID, SERVER = "invalid_request_error", "server_error"
local GENERIC = {
  [400] = error_json("The request is invalid.", INVALID, "invalid_request"),
  [401] = error_json("Invalid authentication.", INVALID, "invalid_api_key"),
  [403] = error_json("You are not allowed to make this request.", "permission_error",
    "permission_denied"),
  [404] = error_json("The requested resource was not found.", INVALID, "not_found"),
  [409] = error_json("The request conflicts with the current state.", INVALID, "conflict"),
  [501] = error_json("This endpoint is not implemented.", INVALID, "not_implemented"),
  [503] = error_json("The service is temporarily unavailable. Please retry.", SERVER, "service_unavailable"),
  [504] = error_json("The service did not answer in time. Please retry.", SERVER, "timeout"),
}
local CLIENT_ERROR = error_json("The request could not be processed.", INVALID, nil)
local SERVER_ERROR = error_json("The server had an error while processing your request.", SERVER,
  "internal_error")

-- Every rate limit or quota of ours carries its metadata, so a bare RESOURCE_EXHAUSTED (429) is
-- gRPC's own message size limit: the answer was too large, which is not the client's doing.
local TOO_LARGE = error_json("The answer is larger than the gateway's size limit for one message.",
  SERVER, "response_too_large")
local REMAPPED = { [429] = 502 }

-- The status and body of an error without our metadata.
local function generic_error(status)
  if REMAPPED[status] ~= nil then
    return REMAPPED[status], TOO_LARGE
  end
  return status, GENERIC[status] or (status < 500 and CLIENT_ERROR) or SERVER_ERROR
end

local function strip(map)
  if map == nil then
    return
  end
  local doomed = {}
  for key, _ in pairs(map) do
    if is_plumbing(key) then
      doomed[#doomed + 1] = key
    end
  end
  for _, key in ipairs(doomed) do
    map:remove(key)
  end
end

-- HTTP/1.1 has no trailers: what the service put there (retry-after, rate-limit headers) becomes
-- response headers, and the trailers are emptied.
local function move_trailers(trailers, headers)
  if trailers == nil then
    return
  end
  local moved = {}
  for key, value in pairs(trailers) do
    moved[#moved + 1] = { key, value }
  end
  for _, entry in ipairs(moved) do
    local key, value = entry[1], entry[2]
    trailers:remove(key)
    if not is_plumbing(key) and headers:get(key) == nil then
      headers:add(key, value)
    end
  end
end

local function valid_status(value)
  local status = tonumber(value)
  if status ~= nil and status >= 200 and status <= 599 and status == math.floor(status) then
    return status
  end
  return nil
end

local function lookup(headers, trailers, key)
  local value = headers:get(key)
  if value == nil and trailers ~= nil then
    value = trailers:get(key)
  end
  return value
end

-- An error response: small, so buffering it whole is cheap. The failure's metadata is in the
-- headers (trailers-only gRPC response) or in the trailers (the service had sent headers first).
local function shape_error(handle)
  local body = handle:body(true)
  -- body() may have waited for the end of the stream: fetch the headers again after it.
  local headers = handle:headers()
  local trailers = handle:trailers()
  local status = valid_status(headers:get(":status")) or 500
  local text = lookup(headers, trailers, "x-openai-error")
  if text ~= nil then
    status = valid_status(lookup(headers, trailers, "x-http-status")) or status
  else
    text = body:getBytes(0, body:length())
    if text:sub(1, 9) ~= '{"error":' then
      -- No metadata from us (a crash, a status from gRPC itself): its text stays inside.
      status, text = generic_error(status)
    end
  end
  strip(headers)
  move_trailers(trailers, headers)
  headers:replace(":status", tostring(status))
  headers:replace("content-type", "application/json")
  body:setBytes(text)
  headers:replace("content-length", tostring(#text))
end

function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  local status = valid_status(headers:get(":status")) or 500
  if status >= 400 or headers:get("x-openai-error") ~= nil then
    shape_error(response_handle)
    return
  end
  -- A success whose service asked for another status (a redirect: OAuth's authorize answers 302
  -- with a Location header) gets it.
  local wanted = valid_status(headers:get("x-http-status"))
  if wanted ~= nil then
    headers:replace(":status", tostring(wanted))
  end
  -- Not waiting for the trailers: the header mutation filter strips them (envoy_shaper.py).
  strip(headers)
end
