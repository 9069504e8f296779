"""Python drivers and ORMs against a Postgres-protocol server (OrochiDB, or PostgreSQL itself).

Each test connects, creates a table, inserts with bound parameters, reads back every supported
type (text and binary where the driver offers both), rolls a transaction back, uses a
savepoint, and checks that a unique violation arrives as the driver's own exception type
carrying SQLSTATE 23505.

    OROCHI_TEST_DSN="host=127.0.0.1 port=5432 user=postgres dbname=postgres" python test_drivers.py
"""

import asyncio
import datetime
import decimal
import json
import os
import sys
import traceback
import uuid

DSN = os.environ["OROCHI_TEST_DSN"]
PARTS = dict(p.split("=", 1) for p in DSN.split())
HOST, PORT, USER, DB = PARTS["host"], int(PARTS["port"]), PARTS["user"], PARTS["dbname"]

COLUMNS = """id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, n numeric(12,3),
    b bool, t text, vc varchar(20), ch char(5), by bytea, d date, ts timestamp,
    tz timestamptz, u uuid, j json, jb jsonb"""
UID = uuid.UUID("6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
TS = datetime.datetime(2024, 2, 29, 13, 14, 15, 123456)
TZ = datetime.datetime(2024, 2, 29, 13, 14, 15, 500000, tzinfo=datetime.timezone.utc)
ROW = (1, -32768, 2**62, 1.5, -2.25, decimal.Decimal("123456789.125"), True, "héllo wörld",
       "varchar", "ab", b"\x00\xffbin", datetime.date(2024, 2, 29), TS, TZ, UID)
NULLS = (2,) + (None,) * 16


def check_row(got, json_value, jsonb_value, label):
    """The first 15 columns as Python values, then json and jsonb as the driver returns them."""
    expect = ROW[:9] + ("ab   ",) + ROW[10:]
    got = tuple(got)
    for i, (g, e) in enumerate(zip(got[:15], expect)):
        if isinstance(g, memoryview):
            g = bytes(g)
        if isinstance(g, datetime.datetime) and g.tzinfo is not None:
            g = g.astimezone(datetime.timezone.utc)
        assert g == e, f"{label}: column {i}: {g!r} != {e!r}"
    assert got[15] == json_value, f"{label}: json {got[15]!r}"
    assert got[16] == jsonb_value, f"{label}: jsonb {got[16]!r}"


def test_psycopg3():
    import psycopg
    from psycopg.types.json import Json, Jsonb

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS py_psycopg")
        conn.execute(f"CREATE TABLE py_psycopg ({COLUMNS})")
        params = ROW + (Json({"a": [1, 2]}), Jsonb({"k": "v"}))
        conn.execute("INSERT INTO py_psycopg VALUES (" + ", ".join(["%s"] * 17) + ")", params)
        conn.execute("INSERT INTO py_psycopg VALUES (" + ", ".join(["%s"] * 17) + ")", NULLS)
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT * FROM py_psycopg WHERE id = %s", (1,))
            check_row(cur.fetchone(), {"a": [1, 2]}, {"k": "v"}, f"psycopg binary={binary}")
            cur.execute("SELECT * FROM py_psycopg WHERE id = %s", (2,))
            assert cur.fetchone() == NULLS
        # a statement executed often enough is prepared server-side, then deallocated
        for i in range(8):
            assert conn.execute("SELECT i2 FROM py_psycopg WHERE id = %s", (1,)).fetchone() == (-32768,)
        conn.execute("DEALLOCATE ALL")
        assert conn.execute("SELECT t FROM py_psycopg WHERE id = %s", (1,)).fetchone() == ("héllo wörld",)

        conn.autocommit = False
        with conn.transaction():
            conn.execute("INSERT INTO py_psycopg (id) VALUES (10)")
            try:
                with conn.transaction():  # a savepoint
                    conn.execute("INSERT INTO py_psycopg (id) VALUES (11)")
                    conn.execute("INSERT INTO py_psycopg (id) VALUES (1)")
            except psycopg.errors.UniqueViolation as e:
                assert e.sqlstate == "23505"
            else:
                raise AssertionError("no unique violation")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        try:
            with conn.transaction():
                conn.execute("INSERT INTO py_psycopg (id) VALUES (12)")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        ids = [r[0] for r in conn.execute("SELECT id FROM py_psycopg ORDER BY id")]
        assert ids == [1, 2, 10], ids
        conn.commit()


def test_psycopg2():
    import psycopg2
    import psycopg2.errors
    import psycopg2.extras

    psycopg2.extras.register_uuid()
    conn = psycopg2.connect(DSN)
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS py_psycopg2")
    cur.execute(f"CREATE TABLE py_psycopg2 ({COLUMNS})")
    params = ROW + (psycopg2.extras.Json({"a": [1, 2]}), psycopg2.extras.Json({"k": "v"}))
    cur.execute("INSERT INTO py_psycopg2 VALUES (" + ", ".join(["%s"] * 17) + ")", params)
    conn.commit()
    cur.execute("SELECT * FROM py_psycopg2 WHERE id = %s", (1,))
    check_row(cur.fetchone(), {"a": [1, 2]}, {"k": "v"}, "psycopg2")
    cur.execute("INSERT INTO py_psycopg2 (id) VALUES (%s)", (5,))
    conn.rollback()
    cur.execute("SELECT count(*) FROM py_psycopg2")
    assert cur.fetchone() == (1,)
    try:
        cur.execute("INSERT INTO py_psycopg2 (id) VALUES (%s)", (1,))
    except psycopg2.errors.UniqueViolation as e:
        assert e.pgcode == "23505"
    else:
        raise AssertionError("no unique violation")
    conn.rollback()
    conn.close()


def test_asyncpg():
    import asyncpg

    async def run():
        conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database=DB)
        await conn.execute("DROP TABLE IF EXISTS py_asyncpg")
        await conn.execute(f"CREATE TABLE py_asyncpg ({COLUMNS})")
        params = ROW + ('{"a": [1, 2]}', '{"k": "v"}')
        await conn.execute(
            "INSERT INTO py_asyncpg VALUES (" + ", ".join(f"${i}" for i in range(1, 18)) + ")",
            *params,
        )
        row = await conn.fetchrow("SELECT * FROM py_asyncpg WHERE id = $1", 1)
        # json comes back as the text stored; jsonb as Postgres prints it
        check_row(row, '{"a": [1, 2]}', '{"k": "v"}', "asyncpg")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO py_asyncpg (id) VALUES (5)")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        async with conn.transaction():
            await conn.execute("INSERT INTO py_asyncpg (id) VALUES (6)")
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute("INSERT INTO py_asyncpg (id) VALUES (1)")
            except asyncpg.UniqueViolationError as e:
                assert e.sqlstate == "23505"
            else:
                raise AssertionError("no unique violation")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM py_asyncpg ORDER BY id")]
        assert ids == [1, 6], ids
        await conn.close()

    asyncio.run(run())


def test_sqlalchemy():
    from sqlalchemy import Column, Integer, Numeric, String, create_engine, select, text
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import DeclarativeBase, Session

    for dialect in ("psycopg", "psycopg2"):
        engine = create_engine(f"postgresql+{dialect}://{USER}@{HOST}:{PORT}/{DB}")

        class Base(DeclarativeBase):
            pass

        class Item(Base):
            __tablename__ = f"py_sa_{dialect}"
            id = Column(Integer, primary_key=True)
            name = Column(String(50), nullable=False)
            price = Column(Numeric(10, 2))

        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add_all([Item(id=1, name="a", price=decimal.Decimal("1.25")),
                       Item(id=2, name="b", price=decimal.Decimal("2.50"))])
            s.commit()
            got = [(i.id, i.name, i.price) for i in s.scalars(select(Item).order_by(Item.id))]
            assert got == [(1, "a", decimal.Decimal("1.25")), (2, "b", decimal.Decimal("2.50"))], got
            s.add(Item(id=1, name="duplicate"))
            try:
                s.commit()
            except IntegrityError as e:
                code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
                assert code == "23505", code
                s.rollback()
            else:
                raise AssertionError("no unique violation")
            with s.begin_nested():  # a savepoint
                s.add(Item(id=3, name="c"))
            s.commit()
            assert s.scalar(select(Item.name).where(Item.id == 3)) == "c"
        with engine.begin() as conn:  # Core
            conn.execute(text(f"UPDATE py_sa_{dialect} SET price = price * 2 WHERE id = :id"), {"id": 2})
            assert conn.execute(text(f"SELECT price FROM py_sa_{dialect} WHERE id = 2")).scalar() == decimal.Decimal("5.00")

        # an Identity() key (GENERATED BY DEFAULT AS IDENTITY): the ORM reads the new ids back
        from sqlalchemy import Identity

        class Note(Base):
            __tablename__ = f"py_sa_note_{dialect}"
            id = Column(Integer, Identity(), primary_key=True)
            body = Column(String(50))

        Note.__table__.drop(engine, checkfirst=True)
        Note.__table__.create(engine)
        with Session(engine) as s:
            notes = [Note(body="x"), Note(body="y")]
            s.add_all(notes)
            s.commit()
            assert [n.id for n in notes] == [1, 2], [n.id for n in notes]
            assert s.scalar(select(Note.body).where(Note.id == 2)) == "y"
        Note.__table__.drop(engine)
        engine.dispose()


def test_intervals():
    """An interval column, bound and read back as datetime.timedelta: psycopg 3 in text and
    binary, psycopg2 in text, asyncpg in binary."""
    import asyncpg
    import psycopg
    import psycopg2

    values = [datetime.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5),
              datetime.timedelta(hours=-3), datetime.timedelta(0)]
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS py_interval")
        conn.execute("CREATE TABLE py_interval (id int PRIMARY KEY, d interval)")
        for i, v in enumerate(values):
            conn.execute("INSERT INTO py_interval VALUES (%s, %s)", (i, v))
        for binary in (False, True):
            got = [r[0] for r in conn.cursor(binary=binary).execute(
                "SELECT d FROM py_interval ORDER BY id")]
            assert got == values, f"psycopg binary={binary}: {got}"
        assert conn.execute(
            "SELECT id FROM py_interval WHERE d > %s ORDER BY id", (datetime.timedelta(hours=1),)
        ).fetchall() == [(0,)]
    conn2 = psycopg2.connect(DSN)
    cur = conn2.cursor()
    cur.execute("SELECT d FROM py_interval ORDER BY id")
    assert [r[0] for r in cur.fetchall()] == values
    conn2.close()

    async def run():
        conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database=DB)
        await conn.execute("INSERT INTO py_interval VALUES ($1, $2)", 9, datetime.timedelta(days=-2))
        rows = await conn.fetch("SELECT d FROM py_interval ORDER BY id")
        assert [r["d"] for r in rows] == values + [datetime.timedelta(days=-2)], rows
        await conn.execute("DROP TABLE py_interval")
        await conn.close()

    asyncio.run(run())


def main():
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok      {name}")
            except Exception:
                failed += 1
                print(f"FAILED  {name}")
                traceback.print_exc()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
