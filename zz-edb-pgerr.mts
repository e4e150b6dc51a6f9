import postgres from "postgres";
for (const url of ["postgres://postgres@127.0.0.1:1/x", "postgres://postgres@127.0.0.1:5432/nope_db", "postgres://nobody@127.0.0.1:5432/postgres", "postgres://postgres@no-such-host.invalid:5432/x", "postgres://postgres@10.255.255.1:5432/x"]) {
  const c = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} });
  try { await c`select 1`; } catch (e: any) { console.log(url, { name: e.name, code: e.code, message: e.message, errno: e.errno, severity: e.severity, address: e.address, port: e.port, hostname: e.hostname }); }
  await c.end({ timeout: 1 });
}
const c = postgres("postgres://postgres@127.0.0.1:5432/postgres", { max: 1, onnotice: () => {}, connection: { application_name: "x-svc", statement_timeout: 30000, idle_in_transaction_session_timeout: 60000 } as any });
console.log(await c`select current_setting('statement_timeout') s, current_setting('idle_in_transaction_session_timeout') i, current_setting('application_name') a`);
await c.end();
