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

local GRPC_KEY = "aggregator.grpc"

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

local function valid_status(value)
  local status = tonumber(value)
  if status ~= nil and status >= 200 and status <= 599 and status == math.floor(status) then
    return status
  end
  return nil
end

-- Replaces the whole body. Used only on error responses, which are small: buffering is cheap.
local function set_body(handle, headers, json)
  local body = handle:body(true)
  body:setBytes(json)
  headers:replace("content-length", tostring(#json))
  headers:replace("content-type", "application/json")
end

local function is_grpc(handle)
  local metadata = handle:streamInfo():dynamicMetadata():get(GRPC_KEY)
  return metadata ~= nil and metadata["grpc"] == true
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
  local error_json = headers:get("x-openai-error")
  if error_json ~= nil then
    -- A trailers-only gRPC failure: everything we need is in the headers.
    local status = valid_status(headers:get("x-http-status")) or valid_status(headers:get(":status")) or 500
    strip(headers)
    headers:replace(":status", tostring(status))
    set_body(response_handle, headers, error_json)
    return
  end
  local status = valid_status(headers:get(":status")) or 500
  if status >= 400 then
    strip(headers)
    local body = response_handle:body(true)
    local text = body:getBytes(0, body:length())
    if text:sub(1, 9) ~= '{"error":' then
      -- A failure without our metadata; its text (a google.rpc.Status, an exception) stays inside.
      set_body(response_handle, headers, generic_error(status))
    end
    strip(response_handle:trailers())
    return
  end
  strip(headers)
  -- Waiting for the trailers lets the body stream through chunk by chunk.
  strip(response_handle:trailers())
end
