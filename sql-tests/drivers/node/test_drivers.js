// node-postgres (`pg`) against a Postgres-protocol server (OrochiDB, or PostgreSQL itself):
// connect, create a table, insert with bound parameters, read every supported type back,
// roll a transaction back, use a savepoint, and get a unique violation as an error with code
// 23505.
//
//   OROCHI_TEST_DSN="host=127.0.0.1 port=5432 user=postgres dbname=postgres" node test_drivers.js
const assert = require('assert');
const { Client } = require('pg');

const parts = Object.fromEntries(process.env.OROCHI_TEST_DSN.split(' ').map((p) => p.split('=')));

async function main() {
  const c = new Client({ host: parts.host, port: +parts.port, user: parts.user, database: parts.dbname });
  await c.connect();
  await c.query('DROP TABLE IF EXISTS js_pg');
  await c.query(`CREATE TABLE js_pg (id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8,
    n numeric(12,3), b bool, t text, vc varchar(20), ch char(5), by bytea, d date, ts timestamp,
    tz timestamptz, u uuid, j json, jb jsonb)`);
  const params = [1, -32768, '4611686018427387904', 1.5, -2.25, '123456789.125', true, 'héllo wörld',
    'varchar', 'ab', Buffer.from([0, 255, 98]), '2024-02-29', '2024-02-29 13:14:15.123456',
    '2024-02-29T13:14:15.5Z', '6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d', { a: [1, 2] }, { k: 'v' }];
  const ins = await c.query(
    'INSERT INTO js_pg VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)', params);
  assert.strictEqual(ins.rowCount, 1);
  assert.strictEqual(ins.command, 'INSERT');
  const r = (await c.query('SELECT * FROM js_pg WHERE id = $1', [1])).rows[0];
  assert.strictEqual(r.i2, -32768);
  assert.strictEqual(r.i8, '4611686018427387904'); // int8 arrives as a string
  assert.strictEqual(r.f4, 1.5);
  assert.strictEqual(r.f8, -2.25);
  assert.strictEqual(r.n, '123456789.125');
  assert.strictEqual(r.b, true);
  assert.strictEqual(r.t, 'héllo wörld');
  assert.strictEqual(r.vc, 'varchar');
  assert.strictEqual(r.ch, 'ab   ');
  assert.deepStrictEqual([...r.by], [0, 255, 98]);
  assert.ok(r.d instanceof Date);
  assert.strictEqual(r.tz.toISOString(), '2024-02-29T13:14:15.500Z');
  assert.strictEqual(r.u, '6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d');
  assert.deepStrictEqual(r.j, { a: [1, 2] });
  assert.deepStrictEqual(r.jb, { k: 'v' });
  // text format of the same values
  const t = (await c.query("SELECT ts::text AS ts, d::text AS d FROM js_pg WHERE id = 1")).rows[0];
  assert.strictEqual(t.ts, '2024-02-29 13:14:15.123456');
  assert.strictEqual(t.d, '2024-02-29');

  await c.query('BEGIN');
  await c.query('INSERT INTO js_pg (id) VALUES ($1)', [2]);
  await c.query('ROLLBACK');
  await c.query('BEGIN');
  await c.query('INSERT INTO js_pg (id) VALUES ($1)', [3]);
  await c.query('SAVEPOINT s');
  let code = null;
  try {
    await c.query('INSERT INTO js_pg (id) VALUES ($1)', [1]);
  } catch (e) {
    code = e.code;
  }
  assert.strictEqual(code, '23505');
  await c.query('ROLLBACK TO SAVEPOINT s');
  await c.query('COMMIT');
  const ids = (await c.query('SELECT id FROM js_pg ORDER BY id')).rows.map((x) => x.id);
  assert.deepStrictEqual(ids, [1, 3]);
  await c.end();
  console.log('ok      node-postgres');
}

main().catch((e) => {
  console.error('FAILED  node-postgres');
  console.error(e);
  process.exit(1);
});
