//! The worker's lifecycle: settings reloads and restarts. One test, run in
//! order, because each step disturbs every connection.

use realtime_e2e::*;
use serde_json::json;
use std::time::Duration;

async fn wait_for_health() {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(format!("127.0.0.1:{}", ws_port())).await.is_ok()
            && get("/health").await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the worker did not come back within 10 s");
}

fn reload(sql: &str) {
    psql(sql);
    psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
}

async fn expect_close(c: &mut Client, code: u16) {
    loop {
        let m = c.try_recv(Duration::from_secs(5)).await.expect("the socket is closed");
        if m.event == "socket_close" {
            assert_eq!(m.payload["code"], code, "{m:?}");
            return;
        }
    }
}

#[tokio::test]
async fn reloads_and_restarts() {
    wait_for_health().await;

    // private_only refuses public joins once reloaded.
    reload("ALTER SYSTEM SET realtime.private_only = on");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let (_, reply) = c.join(&format!("realtime:{}", unique("pub")), json!({"config": {}})).await;
    assert_eq!(reply["response"]["reason"], "PrivateOnly: This project only allows private channels");
    reload("ALTER SYSTEM RESET realtime.private_only");
    c.join_ok(&format!("realtime:{}", unique("pub")), json!({})).await;

    // A new JWT secret disconnects every socket with 1012; old tokens stop working.
    reload("ALTER SYSTEM SET realtime.jwt_secret = 'another-secret-that-is-at-least-32-characters'");
    expect_close(&mut c, 1012).await;
    let refused = tokio_tungstenite::connect_async(ws_url(Vsn::V2, &jwt("anon"))).await;
    assert!(refused.is_err(), "a token signed with the old secret is refused");
    reload("ALTER SYSTEM RESET realtime.jwt_secret");
    let mut c = Client::connect(Vsn::V1, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("back")), json!({})).await;

    // pg_terminate_backend: sockets close with 1001 and the worker comes back.
    let pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    assert!(!pid.is_empty(), "the worker shows in pg_stat_activity");
    psql(&format!("SELECT pg_terminate_backend({pid})"));
    expect_close(&mut c, 1001).await;
    wait_for_health().await;
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("after-restart")), json!({})).await;
    let new_pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
    assert_ne!(new_pid, pid);
}
