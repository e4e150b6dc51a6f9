/**
 * A TCP server that speaks just enough of the PostgreSQL wire protocol to
 * refuse a password the way PostgreSQL does with `password` authentication
 * in pg_hba.conf: it asks for the password, then answers FATAL 28P01
 * "password authentication failed for user …" and hangs up. The test
 * server trusts every local login, so a wrong password cannot be produced
 * there; every other start-up error is tested against the real server.
 */
import { createServer, type Server, type Socket } from "node:net";

export interface PgRefuser extends AsyncDisposable {
  readonly port: number;
  close(): Promise<void>;
}

const SSL_REQUEST = 80877103;

/** Listens on 127.0.0.1 on a free port. */
export async function startPgRefuser(): Promise<PgRefuser> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffered = Buffer.alloc(0);
    let user = "";
    socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (!user) {
          // Untyped start-up packets: SSLRequest or StartupMessage.
          if (buffered.length < 8) return;
          const length = buffered.readInt32BE(0);
          if (buffered.length < length) return;
          const packet = buffered.subarray(0, length);
          buffered = buffered.subarray(length);
          if (packet.readInt32BE(4) === SSL_REQUEST) {
            socket.write("N");
            continue;
          }
          const params = packet.subarray(8).toString("utf8").split("\0");
          user = params[params.indexOf("user") + 1] ?? "";
          socket.write(message("R", int32(3))); // AuthenticationCleartextPassword
          continue;
        }
        // Typed messages: the PasswordMessage ('p') is what it waits for.
        if (buffered.length < 5) return;
        const length = buffered.readInt32BE(1);
        if (buffered.length < 1 + length) return;
        const type = String.fromCharCode(buffered[0] ?? 0);
        buffered = buffered.subarray(1 + length);
        if (type === "p") {
          const fields = [
            ["S", "FATAL"],
            ["V", "FATAL"],
            ["C", "28P01"],
            ["M", `password authentication failed for user "${user}"`],
          ];
          const body = Buffer.concat([...fields.map(([k, v]) => Buffer.from(`${k}${v}\0`)), Buffer.from([0])]);
          socket.end(message("E", body));
          return;
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return { port, close, [Symbol.asyncDispose]: close };
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

function message(type: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(type), int32(body.length + 4), body]);
}
