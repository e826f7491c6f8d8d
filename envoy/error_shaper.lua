-- The error shaper of the edge (DESIGN.md §3). It runs first among the HTTP filters, so on the way
-- back it sees each response after the gRPC-JSON transcoder.
--
-- For HTTP (non-gRPC) clients:
--   * a failed RPC: its trailing metadata carries the final OpenAI error JSON (`x-openai-error`)
--     and the HTTP status (`x-http-status`). A failure before the first message is a gRPC
--     trailers-only response, which reaches us as response headers with no body; we set the status,
--     put the JSON in as the body and drop the gRPC plumbing. `retry-after` and any other header
--     the service set stay.
--   * a failed RPC without that metadata (a crash, a status from gRPC itself): the transcoder's
--     status stays and the body becomes a generic OpenAI error for it, never the service's text.
--   * Envoy's own replies are already OpenAI JSON (local_reply_config) and pass unchanged.
--   * success: the gRPC headers and trailers are removed; the body streams through unbuffered.
-- For native gRPC clients nothing is changed.

local GRPC_KEY = "aggregator.grpc" -- services/runtime/envoy.py matches on it

-- Response headers (and trailers) no HTTP client should see.
local PLUMBING = {
  ["grpc-status"] = true, ["grpc-message"] = true, ["grpc-status-details-bin"] = true,
  ["grpc-accept-encoding"] = true, ["grpc-encoding"] = true,
  ["x-openai-error"] = true, ["x-http-status"] = true,
}

local function generic_error(status)
  local message, error_type, code = "The server had an error while processing your request.",
    "server_error", "internal_error"
  if status == 400 then
    message, error_type, code = "The request is invalid.", "invalid_request_error", "invalid_request"
  elseif status == 401 then
    message, error_type, code = "Invalid authentication.", "invalid_request_error", "invalid_api_key"
  elseif status == 403 then
    message, error_type, code = "You are not allowed to make this request.", "permission_error",
      "insufficient_permissions"
  elseif status == 404 then
    message, error_type, code = "The requested resource was not found.", "invalid_request_error", "not_found"
  elseif status == 409 then
    message, error_type, code = "The request conflicts with the current state.", "invalid_request_error",
      "conflict"
  elseif status == 429 then
    message, error_type, code = "Too many requests. Please retry later.", "rate_limit_error",
      "rate_limit_exceeded"
  elseif status == 501 then
    message, error_type, code = "This endpoint is not implemented.", "invalid_request_error", "not_implemented"
  elseif status == 503 then
    message, error_type, code = "The service is temporarily unavailable. Please retry.", "server_error",
      "service_unavailable"
  elseif status == 504 then
    message, error_type, code = "The service did not answer in time. Please retry.", "server_error", "timeout"
  elseif status >= 400 and status < 500 then
    message, error_type, code = "The request could not be processed.", "invalid_request_error", nil
  end
  local code_json = code and ('"' .. code .. '"') or "null"
  return '{"error":{"message":"' .. message .. '","type":"' .. error_type .. '","param":null,"code":'
    .. code_json .. '}}'
end

local function strip(map)
  if map == nil then
    return
  end
  local doomed = {}
  for key, _ in pairs(map) do
    if PLUMBING[key] or key:sub(1, 8) == "x-envoy-" then
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
    trailers:remove(entry[1])
    if not PLUMBING[entry[1]] and entry[1]:sub(1, 8) ~= "x-envoy-" and headers:get(entry[1]) == nil then
      headers:add(entry[1], entry[2])
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

local function is_grpc(handle)
  local metadata = handle:streamInfo():dynamicMetadata():get(GRPC_KEY)
  return metadata ~= nil and metadata["grpc"] == true
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
      text = generic_error(status)
    end
  end
  strip(headers)
  move_trailers(trailers, headers)
  headers:replace(":status", tostring(status))
  headers:replace("content-type", "application/json")
  body:setBytes(text)
  headers:replace("content-length", tostring(#text))
end

function envoy_on_request(request_handle)
  local content_type = request_handle:headers():get("content-type") or ""
  if content_type:sub(1, 16) == "application/grpc" then
    request_handle:streamInfo():dynamicMetadata():set(GRPC_KEY, "grpc", true)
  end
end

function envoy_on_response(response_handle)
  if is_grpc(response_handle) then
    return
  end
  local headers = response_handle:headers()
  local status = valid_status(headers:get(":status")) or 500
  if status >= 400 or headers:get("x-openai-error") ~= nil then
    shape_error(response_handle)
    return
  end
  strip(headers)
  -- Waiting for the trailers (not the body) lets the body stream through chunk by chunk.
  strip(response_handle:trailers())
end
