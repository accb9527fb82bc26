// Drives the PostgreSQL JDBC driver through the sluice gateway: server-prepared
// (named) statements via prepareThreshold, binary transfer, batches, a fetchSize cursor
// (portal suspension), and an error inside a batch.
// Usage: java -cp postgresql.jar:. JdbcCheck URL USER PASSWORD
import java.sql.*;
import java.util.Properties;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("prepareThreshold", "1");
        props.setProperty("binaryTransfer", "true");
        props.setProperty("sslmode", "disable");
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE orders(id int PRIMARY KEY, amount numeric, note text)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO orders VALUES (?, ?, ?)")) {
                for (int i = 1; i <= 200; i++) {
                    p.setInt(1, i);
                    p.setBigDecimal(2, new java.math.BigDecimal(i + ".25"));
                    p.setString(3, "order " + i);
                    p.addBatch();
                }
                int[] counts = p.executeBatch();
                System.out.println("batch=" + counts.length);
            }
            try (PreparedStatement p = c.prepareStatement("SELECT note FROM orders WHERE id = ?")) {
                for (int i = 1; i <= 5; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        if (!r.getString(1).equals("order " + i)) throw new AssertionError("wrong row");
                    }
                }
            }
            c.setAutoCommit(false);
            try (PreparedStatement p = c.prepareStatement("SELECT id FROM orders ORDER BY id")) {
                p.setFetchSize(30);
                int n = 0;
                try (ResultSet r = p.executeQuery()) {
                    while (r.next()) n++;
                }
                System.out.println("cursor=" + n);
            }
            c.commit();
            c.setAutoCommit(true);
            try (PreparedStatement p = c.prepareStatement("INSERT INTO orders VALUES (?, 1, 'x')")) {
                p.setInt(1, 1000);
                p.addBatch();
                p.setInt(1, 1); // duplicate key
                p.addBatch();
                p.executeBatch();
                throw new AssertionError("duplicate accepted");
            } catch (BatchUpdateException e) {
                System.out.println("batch_error=" + e.getSQLState());
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT count(*) FROM orders")) {
                r.next();
                System.out.println("count=" + r.getInt(1));
            }
        }
    }
}
