-- Unix-domain stream echo server: like echo_server.lua, on a socket path
-- ("@name" is Linux's abstract namespace); Ctrl-C or kill removes the file.
-- Try: sockrun examples/unix_echo.lua [PATH]   (default /tmp/sockrun-echo.sock),
--      then: nc -U /tmp/sockrun-echo.sock
io.stdout:setvbuf("line")
local sr = require "sockrun"

local path = arg[1] or "/tmp/sockrun-echo.sock"

local function echo(conn)
  while true do
    local data = conn:read()
    if not data or not conn:write(data) then return end
  end
end

local server, err, code = sr.listen(path, echo)
if not server and code == "EADDRINUSE" then
  -- A socket file left by a server that died without cleaning up? If nobody
  -- answers on it and it is not a regular file, remove it and try again.
  local probe = sr.connect(path, { timeout = 1 })
  local file = io.open(path)  -- opening a socket file fails; a regular file opens
  if probe then
    probe:close()
    err = "another server is already listening there"
  elseif file then
    file:close()
    err = "the path exists and is not a socket"
  else
    os.remove(path)
    server, err = sr.listen(path, echo)
  end
end
if not server then
  io.stderr:write(("unix echo: cannot listen on %s: %s\n"):format(path, err))
  os.exit(1)
end

-- Closing the listening socket removes the file it made. Do it on the usual
-- stop signals, then stop at once: sr.shutdown(0) gives the connections'
-- handlers no time to finish, so open connections are closed.
local function stop(signame)
  print("unix echo: " .. signame .. ", removing " .. path)
  server:close()
  sr.shutdown(0)
end
sr.signal("SIGINT", function() stop("SIGINT") end)
sr.signal("SIGTERM", function() stop("SIGTERM") end)

-- Announced last, once the stop signals are handled.
print(("unix echo listening on %s -- try: nc -U %s"):format(path, path))
