-- wrk script: bench/count.lua with "Connection: close" on every request, so each
-- request opens a new connection (the master hands every one to a worker).
--
-- Usage: wrk -t1 -c16 -d10s -s bench/close.lua http://127.0.0.1:8000/fast

local here = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
dofile(here .. "count.lua")

local count_init = init
function init(args)
   count_init(args)
   wrk.headers["Connection"] = "close"
end
