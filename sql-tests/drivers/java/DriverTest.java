// The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) against a Postgres-protocol
// server (OrochiDB, or PostgreSQL itself): connect, create a table, insert every supported type
// with bound parameters, read them back, roll a transaction back, use a savepoint, and get a
// unique violation as an SQLException with SQLState 23505.
//
//   OROCHI_TEST_DSN="host=127.0.0.1 port=5432 user=postgres dbname=postgres" \
//     java -cp /usr/share/java/postgresql.jar DriverTest.java
import java.math.BigDecimal;
import java.sql.*;
import java.time.*;
import java.util.*;

public class DriverTest {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static void eq(Object got, Object want, String what) {
        if (!Objects.equals(got, want)) throw new AssertionError(what + ": got " + got + ", want " + want);
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> p = new HashMap<>();
        for (String kv : System.getenv("OROCHI_TEST_DSN").split(" ")) {
            String[] a = kv.split("=", 2);
            p.put(a[0], a[1]);
        }
        String url = "jdbc:postgresql://" + p.get("host") + ":" + p.get("port") + "/" + p.get("dbname");
        Properties props = new Properties();
        props.setProperty("user", p.get("user"));
        // server-side prepared statements after 2 executions (the driver's binary transfer path)
        props.setProperty("prepareThreshold", "2");
        try (Connection c = DriverManager.getConnection(url, props)) {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS java_jdbc");
                s.execute("CREATE TABLE java_jdbc (id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, "
                        + "n numeric(12,3), b bool, t text, vc varchar(20), ch char(5), by bytea, d date, "
                        + "ts timestamp, tz timestamptz, u uuid, j json, jb jsonb)");
            }
            UUID uid = UUID.fromString("6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO java_jdbc VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?::json,?::jsonb)")) {
                ps.setInt(1, 1);
                ps.setShort(2, (short) -32768);
                ps.setLong(3, 1L << 62);
                ps.setFloat(4, 1.5f);
                ps.setDouble(5, -2.25);
                ps.setBigDecimal(6, new BigDecimal("123456789.125"));
                ps.setBoolean(7, true);
                ps.setString(8, "héllo wörld");
                ps.setString(9, "varchar");
                ps.setString(10, "ab");
                ps.setBytes(11, new byte[] {0, (byte) 255, 98});
                ps.setObject(12, LocalDate.of(2024, 2, 29));
                ps.setObject(13, LocalDateTime.of(2024, 2, 29, 13, 14, 15, 123456000));
                ps.setObject(14, OffsetDateTime.of(2024, 2, 29, 13, 14, 15, 500000000, ZoneOffset.UTC));
                ps.setObject(15, uid);
                ps.setString(16, "{\"a\": [1, 2]}");
                ps.setString(17, "{\"k\": \"v\"}");
                eq(ps.executeUpdate(), 1, "insert count");
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT * FROM java_jdbc WHERE id = ?")) {
                for (int round = 0; round < 4; round++) { // text first, then server-prepared/binary
                    ps.setInt(1, 1);
                    try (ResultSet r = ps.executeQuery()) {
                        check(r.next(), "a row");
                        eq(r.getShort("i2"), (short) -32768, "i2");
                        eq(r.getLong("i8"), 1L << 62, "i8");
                        eq(r.getFloat("f4"), 1.5f, "f4");
                        eq(r.getDouble("f8"), -2.25, "f8");
                        eq(r.getBigDecimal("n"), new BigDecimal("123456789.125"), "n");
                        eq(r.getBoolean("b"), true, "b");
                        eq(r.getString("t"), "héllo wörld", "t");
                        eq(r.getString("vc"), "varchar", "vc");
                        eq(r.getString("ch"), "ab   ", "ch");
                        check(Arrays.equals(r.getBytes("by"), new byte[] {0, (byte) 255, 98}), "by");
                        eq(r.getObject("d", LocalDate.class), LocalDate.of(2024, 2, 29), "d");
                        eq(r.getObject("ts", LocalDateTime.class), LocalDateTime.of(2024, 2, 29, 13, 14, 15, 123456000), "ts");
                        eq(r.getObject("tz", OffsetDateTime.class).toInstant(),
                                OffsetDateTime.of(2024, 2, 29, 13, 14, 15, 500000000, ZoneOffset.UTC).toInstant(), "tz");
                        eq(r.getObject("u"), uid, "u");
                        eq(r.getString("j"), "{\"a\": [1, 2]}", "j");
                        eq(r.getString("jb"), "{\"k\": \"v\"}", "jb");
                        check(!r.next(), "one row");
                    }
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO java_jdbc (id) VALUES (2)");
                c.rollback();
                s.executeUpdate("INSERT INTO java_jdbc (id) VALUES (3)");
                Savepoint sp = c.setSavepoint("sp");
                String state = null;
                try {
                    s.executeUpdate("INSERT INTO java_jdbc (id) VALUES (1)");
                } catch (SQLException e) {
                    state = e.getSQLState();
                }
                eq(state, "23505", "unique violation");
                c.rollback(sp);
                c.commit();
                List<Integer> ids = new ArrayList<>();
                try (ResultSet r = s.executeQuery("SELECT id FROM java_jdbc ORDER BY id")) {
                    while (r.next()) ids.add(r.getInt(1));
                }
                eq(ids, List.of(1, 3), "ids");
            }
            DatabaseMetaData md = c.getMetaData();
            check(md.getDatabaseProductName().equals("PostgreSQL"), "product name");
        }
        System.out.println("ok      jdbc");
    }
}
