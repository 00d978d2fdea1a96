-- HTTP/1.1 "Hello, World!" server with keep-alive: one connection serves
-- request after request until the client closes or asks "Connection: close".
-- Try: sockrun examples/http_hello.lua [HOST] [PORT]   (default 127.0.0.1 8080),
--      then: curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/
io.stdout:setvbuf("line")
local sr = require "sockrun"

local host = arg[1] or "127.0.0.1"
local port = math.tointeger(tonumber(arg[2] or 8080))
if not port then
  io.stderr:write("usage: http_hello.lua [HOST] [PORT]\n")
  os.exit(2)
end

local BODY = "Hello, World!"
local IDLE = 30  -- seconds an idle keep-alive connection may wait for its next request

-- Read one request head: the request line and a table of headers (names in
-- lower case). Returns nil at end of file, on a timeout or on garbage.
local function read_request(conn)
  local line = conn:read("l")
  if not line then return nil end
  local method, target, version = line:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return nil end
  local headers = {}
  while true do
    line = conn:read("l")
    if not line then return nil end
    if line == "" then break end  -- the blank line ends the head
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  end
  return { method = method, target = target, version = version, headers = headers }
end

-- Does the client want the connection kept open after this request?
-- HTTP/1.1 keeps it unless "Connection: close"; HTTP/1.0 only on "keep-alive".
local function keep_alive(req)
  local connection = (req.headers["connection"] or ""):lower()
  if req.version == "1.0" then return connection:find("keep%-alive") ~= nil end
  return connection:find("close") == nil
end

local server, err = sr.listen(host, port, function(conn)
  conn:settimeouts(nil, IDLE, IDLE)  -- (connect, read, write): drop idle clients
  while true do
    local req = read_request(conn)
    if not req then return end  -- sr.listen closes conn when we return

    -- This server ignores request bodies, but must still consume them so the
    -- next request on the connection starts at the right byte.
    local header = req.headers["content-length"]
    local length = header and math.tointeger(tonumber(header))
    if header and not (length and length >= 0) then return end -- malformed: close
    if length and length > 0 and not conn:read(length) then return end

    local keep = keep_alive(req)
    local ok = conn:write(
      "HTTP/1.1 200 OK\r\n",
      "Content-Type: text/plain\r\n",
      "Content-Length: ", tostring(#BODY), "\r\n",
      "Connection: ", keep and "keep-alive" or "close", "\r\n",
      "\r\n",
      req.method == "HEAD" and "" or BODY)
    if not ok or not keep then return end
  end
end)
if not server then
  io.stderr:write(("http server: cannot listen on %s:%d: %s\n"):format(host, port, err))
  os.exit(1)
end

host, port = server:getsockname()
local shown = host:find(":", 1, true) and "[" .. host .. "]" or host
print(("http server listening on %s:%d -- try: curl http://%s:%d/"):format(shown, port, shown, port))
