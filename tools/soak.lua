-- soak.lua -- `make soak`: run misbehaving clients against the example
-- servers for SOAK_MINUTES (default 10) and report each server's open
-- descriptors and resident memory over time. Run by the sockrun binary:
--   build/sockrun tools/soak.lua [minutes]
-- Clients (all on 127.0.0.1, each loop bounded by the deadline):
--   churn     short connections in a row, every other one reset (linger 0)
--   flood     lines as fast as the server takes them, reading replies
--   slowloris half a line, then silence until the server gives up or the
--             round ends
--   longline  a line far past the server's 1 MiB line limit
--   garbage   random bytes
local sr = require "sockrun"

local minutes = tonumber(arg[1] or os.getenv("SOAK_MINUTES") or "10")
local sockrun = arg[-1] or "build/sockrun"
local deadline = sr.now() + minutes * 60
io.stdout:setvbuf("line")

-- Start an example server on port 0; returns its pid and port.
local function start(example)
  local p = io.popen(string.format(
    "exec sh -c 'echo $$; exec %s examples/%s 127.0.0.1 0 2>/dev/null'",
    sockrun, example))
  local pid = tonumber(p:read("l"))
  local port
  for line in p:lines() do
    port = tonumber(line:match("listening on [%d%.]+:(%d+)"))
    if port then break end
  end
  return { name = example, pid = pid, port = port, pipe = p }
end

local function sample(srv)
  local fds = 0
  local ls = io.popen("ls /proc/" .. srv.pid .. "/fd 2>/dev/null")
  for _ in ls:lines() do fds = fds + 1 end
  ls:close()
  local rss
  local f = io.open("/proc/" .. srv.pid .. "/status")
  if f then
    rss = tonumber(f:read("a"):match("VmRSS:%s*(%d+)"))
    f:close()
  end
  return fds, rss
end

local counts = { churn = 0, reset = 0, flood = 0, slowloris = 0,
                 longline = 0, garbage = 0, errors = 0 }

local function client(port, body)
  local c = sr.connect("127.0.0.1", port, { timeout = 5 })
  if not c then
    counts.errors = counts.errors + 1
    return
  end
  c:settimeout(5)
  local ok = pcall(body, c)
  if not ok then counts.errors = counts.errors + 1 end
  c:close()
end

local workers = {
  churn = function(port)
    client(port, function(c)
      if counts.churn % 2 == 1 then
        c:setsockopt("linger", 0) -- close sends RST
        counts.reset = counts.reset + 1
      else
        c:write("ping\n")
        c:read("l")
      end
    end)
    counts.churn = counts.churn + 1
  end,
  flood = function(port)
    client(port, function(c)
      for _ = 1, 200 do
        c:write(("x"):rep(100), "\n")
        c:read("l")
      end
    end)
    counts.flood = counts.flood + 1
  end,
  slowloris = function(port)
    client(port, function(c)
      c:write("GET / HTTP/1.1\r\nHost: sl")
      sr.sleep(2)
    end)
    counts.slowloris = counts.slowloris + 1
  end,
  longline = function(port)
    client(port, function(c)
      local chunk = ("y"):rep(64 * 1024)
      for _ = 1, 32 do -- 2 MiB with no newline
        if not c:write(chunk) then break end
      end
      c:read()
    end)
    counts.longline = counts.longline + 1
  end,
  garbage = function(port)
    client(port, function(c)
      local t = {}
      for i = 1, 4096 do t[i] = string.char(math.random(0, 255)) end
      c:write(table.concat(t))
      c:read()
    end)
    counts.garbage = counts.garbage + 1
  end,
}

local servers = { start("echo_server.lua"), start("http_hello.lua"),
                  start("chat_server.lua") }
for _, srv in ipairs(servers) do
  assert(srv.port, "could not start " .. srv.name)
end

-- Each worker kind runs in a few tasks per server until the deadline.
for _, srv in ipairs(servers) do
  for kind, fn in pairs(workers) do
    local n = (kind == "churn" or kind == "slowloris") and 4 or 1
    for _ = 1, n do
      sr.spawn(function()
        while sr.now() < deadline do fn(srv.port) end
      end)
    end
  end
end

print(string.format("soak: %g minute(s) against %d servers", minutes,
  #servers))
print("| t (s) | server | fds | VmRSS (KiB) | connections so far |")
print("|---|---|---|---|---|")
local t0 = sr.now()
local first = {}
-- the servers are ours to stop, whatever happens to this script
local stop_servers <close> = setmetatable({}, { __close = function()
  for _, srv in ipairs(servers) do os.execute("kill " .. srv.pid .. " 2>/dev/null") end
end })
sr.spawn(function()
  while true do
    for _, srv in ipairs(servers) do
      local fds, rss = sample(srv)
      first[srv.name] = first[srv.name] or { fds, rss }
      print(string.format("| %d | %s | %d | %s | %d |", math.floor(sr.now() - t0),
        srv.name, fds, tostring(rss), counts.churn + counts.flood +
        counts.slowloris + counts.longline + counts.garbage))
    end
    if sr.now() >= deadline then break end
    sr.sleep(math.min(30, math.max(1, deadline - sr.now())))
  end
end):join()

sr.sleep(3) -- let the last clients finish
print("\nafter the run:")
for _, srv in ipairs(servers) do
  local fds, rss = sample(srv)
  print(string.format("  %s: fds %d -> %d, VmRSS %s -> %s KiB", srv.name,
    first[srv.name][1], fds, tostring(first[srv.name][2]), tostring(rss)))
end
local parts = {}
for k, v in pairs(counts) do parts[#parts + 1] = k .. "=" .. v end
table.sort(parts)
print("clients: " .. table.concat(parts, " "))
sr.stop()
