// W3/W5 for Node.js, on the `net` module: TCP echo.
//   node bench/node/echo.js PORT
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
if (!Number.isInteger(port)) throw new Error('usage: echo.js PORT');

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});

server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  console.log(`node echo listening on 127.0.0.1:${port}`);
});
