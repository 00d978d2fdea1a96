-- A floor for W4, not a server: bench/sockrun/resp.lua's reads, token for
-- token, with no command table, no argv and no store behind them; every
-- command is answered "+OK". Its instructions per command are what
-- sockrun's framing costs a RESP server written with s:read, whatever the
-- server then does (bench/README.md, "W4 against luv").
--   SOCKRUN_SCRIPTS=bench/floor INSTR_SERVERS=sockrun INSTR_ONLY=W4 make bench-instr
io.stdout:setvbuf("line")
local sr = require "sockrun"

local port = math.tointeger(tonumber(arg[1]))
assert(port, "usage: resp.lua PORT")

-- True once a whole command is read; nil when the client went away or
-- broke the protocol.
local function read_command(conn)
  local first = conn:read(1)
  if first ~= "*" then
    return first and conn:read("l") and true
  end
  local n, rest = conn:read("n", "l")
  if rest ~= "" then return nil end
  for _ = 1, n do
    local dollar, len, eol = conn:read(1, "n", "l")
    if dollar ~= "$" or eol ~= "" then return nil end
    local _, crlf = conn:read(len, "l")
    if crlf ~= "" then return nil end
  end
  return true
end

local server = assert(sr.listen("127.0.0.1", port, function(conn)
  conn:setsockopt("nodelay", true)
  while read_command(conn) do
    if not conn:write("+OK\r\n") then return end
  end
end))

print("sockrun resp floor listening on 127.0.0.1:" .. select(2, server:getsockname()))
