//! tokio-postgres through the gateway: the extended protocol in all its forms.

use std::time::{Duration, Instant};

use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::support::{pg, Gateway};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(gw: &Gateway, db: &str, user: &str, token: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&gw.conninfo(db, user, token), NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[test]
fn extended_protocol_binary_params_pipelining_and_copy() {
    pg().create_db("tpg_ext");
    let gw = Gateway::start("tpg_ext", "");
    let token = gw.user_token("carol");
    runtime().block_on(async {
        let mut client = connect(&gw, "tpg_ext", "carol", &token).await;
        client.batch_execute("CREATE TABLE items(id int8 primary key, name text, price float8, ok bool, data bytea)").await.unwrap();

        // Named prepared statement, binary parameters of several types.
        let insert = client.prepare("INSERT INTO items VALUES ($1, $2, $3, $4, $5)").await.unwrap();
        for i in 0..3i64 {
            client.execute(&insert, &[&i, &format!("item {i}"), &(i as f64 * 1.5), &(i % 2 == 0), &vec![i as u8, 0xff]]).await.unwrap();
        }
        // Pipelining: several queries in flight before any Sync is answered.
        let select = client.prepare("SELECT name, price FROM items WHERE id = $1").await.unwrap();
        let (a, b, c) = tokio::join!(
            client.query_one(&select, &[&0i64]),
            client.query_one(&select, &[&1i64]),
            client.query_one(&select, &[&2i64])
        );
        assert_eq!(a.unwrap().get::<_, String>(0), "item 0");
        assert_eq!(b.unwrap().get::<_, f64>(1), 1.5);
        assert_eq!(c.unwrap().get::<_, String>(0), "item 2");
        // An error inside the extended protocol leaves the session usable.
        let err = client.execute(&insert, &[&0i64, &"dup", &0.0f64, &true, &vec![0u8]]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23505");
        assert_eq!(client.query_one("SELECT count(*) FROM items", &[]).await.unwrap().get::<_, i64>(0), 3);

        // COPY in both directions.
        let sink = client.copy_in("COPY items(id, name) FROM STDIN").await.unwrap();
        pin_mut!(sink);
        let rows: String = (100..1100).map(|i| format!("{i}\tcopied {i}\n")).collect();
        sink.send(bytes::Bytes::from(rows)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1000);
        let stream = client.copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT").await.unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        let text: Vec<u8> = chunks.concat();
        assert_eq!(String::from_utf8(text).unwrap().lines().count(), 1003);

        // Portals with a row limit: PortalSuspended, then the rest.
        let tx = client.transaction().await.unwrap();
        let portal = tx.bind("SELECT id FROM items ORDER BY id", &[]).await.unwrap();
        assert_eq!(tx.query_portal(&portal, 10).await.unwrap().len(), 10);
        assert_eq!(tx.query_portal(&portal, 0).await.unwrap().len(), 993);
        tx.commit().await.unwrap();
    });
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let inserts: Vec<_> = statements
        .iter()
        .filter(|s| s["statement"] == "INSERT INTO items VALUES ($1, $2, $3, $4, $5)")
        .collect();
    assert_eq!(inserts.len(), 4);
    // Binary parameters are rendered by the types the server reported.
    assert_eq!(
        inserts[1]["params"],
        serde_json::json!(["1", "item 1", "1.5", "false", "\\x01ff"])
    );
    assert_eq!(inserts[3]["status"], "error");
    assert_eq!(inserts[3]["error"]["code"], "23505");
    let selects: Vec<_> = statements
        .iter()
        .filter(|s| s["statement"] == "SELECT name, price FROM items WHERE id = $1")
        .collect();
    assert_eq!(selects.len(), 3);
    assert!(selects
        .iter()
        .all(|s| s["rows"] == 1 && s["status"] == "ok"));
    let copy_in = statements
        .iter()
        .find(|s| s["statement"] == "COPY items(id, name) FROM STDIN")
        .unwrap();
    assert_eq!(copy_in["rows"], 1000);
    let portal_runs: Vec<_> = statements
        .iter()
        .filter(|s| s["statement"] == "SELECT id FROM items ORDER BY id")
        .collect();
    assert_eq!(portal_runs.len(), 2, "{portal_runs:?}");
    assert_eq!(portal_runs[0]["tag"], "SUSPENDED");
    assert_eq!(portal_runs[0]["rows"], 10);
    assert_eq!(portal_runs[1]["rows"], 993);
    assert!(gw.verify().status.success());
}

#[test]
fn notifications_and_cancel() {
    pg().create_db("tpg_notify");
    let gw = Gateway::start("tpg_notify", "");
    let token = gw.user_token("dave");
    runtime().block_on(async {
        let (client, mut conn) =
            tokio_postgres::connect(&gw.conninfo("tpg_notify", "dave", &token), NoTls)
                .await
                .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(Ok(msg)) = stream.next().await {
                let _ = tx.send(msg);
            }
        });
        client.batch_execute("LISTEN events").await.unwrap();
        let other = connect(&gw, "tpg_notify", "dave", &token).await;
        other
            .batch_execute("NOTIFY events, 'payload-42'")
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(AsyncMessage::Notification(n)) = rx.recv().await {
                    return n;
                }
            }
        })
        .await
        .expect("notification arrives through the gateway");
        assert_eq!(msg.payload(), "payload-42");

        // Cancel: the gateway maps its own cancel key to the target's backend.
        let cancel = client.cancel_token();
        let started = Instant::now();
        let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(20)").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(NoTls).await.unwrap();
        let err = sleeper.await.unwrap().unwrap_err();
        assert_eq!(err.code().unwrap().code(), "57014", "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    });
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let sleep = statements
        .iter()
        .find(|s| s["statement"] == "SELECT pg_sleep(20)")
        .unwrap();
    assert_eq!(sleep["error"]["code"], "57014");
}

/// A 2-million-row result streams through without the gateway holding it.
#[test]
fn large_result_streams_in_bounded_memory() {
    pg().create_db("tpg_large");
    let gw = Gateway::start("tpg_large", "");
    let token = gw.user_token("erin");
    let baseline = gw.peak_rss_kib();
    let (rows, bytes) = runtime().block_on(async {
        let client = connect(&gw, "tpg_large", "erin", &token).await;
        let stream = client
            .query_raw(
                "SELECT g, repeat('x', 100) FROM generate_series(1, 2000000) g",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        pin_mut!(stream);
        let (mut rows, mut bytes) = (0u64, 0u64);
        while let Some(row) = stream.next().await {
            let row = row.unwrap();
            bytes += row.get::<_, &str>(1).len() as u64 + 4;
            rows += 1;
        }
        (rows, bytes)
    });
    assert_eq!(rows, 2_000_000);
    let peak = gw.peak_rss_kib();
    // ~210 MB went through; the gateway's peak stays a small fraction of that.
    assert!(bytes > 200_000_000);
    assert!(
        peak < baseline + 64 * 1024,
        "gateway peak RSS grew from {baseline} KiB to {peak} KiB"
    );
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    assert_eq!(statements[0]["rows"], 2_000_000);
}
