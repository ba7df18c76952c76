//! Trust inside the database, tried as each attacker would: a role that can
//! only connect, a monitoring role, a role that may create objects in
//! `public`, a table owner, a flood of idle connections, a superuser that
//! happens to be called `service_role`. Each test asserts that nothing got
//! through. Tests that change settings or restart the worker take turns.

use realtime_e2e::*;
use serde_json::json;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SHORT: Duration = Duration::from_millis(1500);

/// Runs `sql` as `role` (a role without LOGIN, reached with SET ROLE: the
/// privileges are the role's own).
fn psql_as(role: &str, sql: &str) -> Result<String, String> {
    try_psql(&format!("SET ROLE {role}; {sql}"))
}

/// A private `read:` channel the policy lets `authenticated` read.
async fn private_subscriber(topic: &str) -> Client {
    psql(
        "DROP POLICY IF EXISTS e2e_trust_read ON realtime.messages;
         CREATE POLICY e2e_trust_read ON realtime.messages FOR SELECT TO authenticated
           USING (realtime.topic() LIKE 'trust:%')",
    );
    let mut c = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": "u1"}))).await;
    c.join_ok(&format!("realtime:{topic}"), json!({"private": true})).await;
    c
}

/// Bus messages as `pg_logical_emit_message` takes them: prefix, then bytes as hex.
fn emit_as(role: &str, prefix: &str, hex: &str) {
    psql_as(role, &format!("SELECT pg_logical_emit_message(false, '{prefix}', decode('{hex}', 'hex'))"))
        .unwrap_or_else(|e| panic!("{role} may call pg_logical_emit_message (PUBLIC may): {e}"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A relayed client broadcast as the bus carries it, from another node.
fn relayed_row(topic: &str, event: &str) -> String {
    format!(
        "X{{\"origin\":\"evil\",\"topic\":\"realtime:{topic}\",\"private\":true,\"event\":\"{event}\"}}\n{{\"msg\":\"forged\"}}"
    )
}

/// Forged messages with every prefix the worker has read, in every shape:
/// the old unsealed rows, a row with a made-up seal, garbage.
fn forge_everything(role: &str, topic: &str) {
    let row = relayed_row(topic, "pwned");
    let fake_seal = format!("{row}\u{1f}{:016x}{:016x}{:016x}{}", 0u64, 1u64, 1u64, "ab".repeat(32));
    for prefix in ["realtime.bus.v1", "realtime.bus.v2", "realtime.bus.v3"] {
        for body in [row.as_bytes(), fake_seal.as_bytes(), b"X", b"\x00\x1f\xff"] {
            emit_as(role, prefix, &hex(body));
        }
    }
}

/// A NOLOGIN role of the tests' (made once), then `grants` for it.
fn attacker_role(name: &str, grants: &str) {
    psql(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} NOLOGIN; END IF;
         END $$;
         {grants}"
    ));
}

fn create_intruder() {
    attacker_role("e2e_intruder", "GRANT CONNECT ON DATABASE postgres TO e2e_intruder;");
}

#[tokio::test]
async fn a_connect_only_role_forges_no_bus_message() {
    let _turn = SERIAL.lock().await;
    create_intruder();
    let topic = unique("trust:forge");
    let mut c = private_subscriber(&topic).await;
    forge_everything("e2e_intruder", &topic);
    c.expect_silence(SHORT).await;
    // The channel itself works: a real broadcast arrives.
    psql(&format!("SELECT realtime.send('{{\"n\":1}}', 'real', '{topic}', true)"));
    let m = c.try_recv(DB_WAIT).await.expect("the real broadcast");
    assert_eq!(m.payload["event"], "real", "{m:?}");
}

#[tokio::test]
async fn with_the_bus_on_only_the_library_s_own_messages_count_and_each_once() {
    let _turn = SERIAL.lock().await;
    create_intruder();
    let _bus = SystemSetting::set("realtime.bus", "on");
    let topic = unique("trust:replay");
    let mut c = private_subscriber(&topic).await;
    let _ = try_psql("SELECT pg_drop_replication_slot('e2e_capture')");
    psql("SELECT pg_create_logical_replication_slot('e2e_capture', 'test_decoding')");
    // A genuine relay, as a standby's worker makes one through the primary.
    psql(&format!(
        "SELECT realtime.bus_relay(ARRAY[$r${}$r$])",
        relayed_row(&topic, "genuine").trim_start_matches('X')
    ));
    let m = c.try_recv(DB_WAIT).await.expect("the genuine relay arrives");
    assert_eq!(m.payload["event"], "genuine", "{m:?}");
    // Its exact bytes and prefix, as WAL holds them, emitted again by the intruder.
    let captured = psql(
        "SELECT substring(data FROM 'prefix: ([^,]*),') || ' ' ||
                encode(convert_to(substr(data, strpos(data, 'content:') + 8), 'UTF8'), 'hex')
         FROM pg_logical_slot_get_changes('e2e_capture', NULL, NULL)
         WHERE data LIKE 'message: transactional: 0 prefix: realtime.bus.%content:X%' LIMIT 1",
    );
    psql("SELECT pg_drop_replication_slot('e2e_capture')");
    let (prefix, bytes) = captured.split_once(' ').expect("the relay is in WAL");
    emit_as("e2e_intruder", prefix, bytes);
    forge_everything("e2e_intruder", &topic);
    c.expect_silence(SHORT).await;
    // A second genuine relay still arrives: the worker dropped only the copies.
    psql(&format!(
        "SELECT realtime.bus_relay(ARRAY[$r${}$r$])",
        relayed_row(&topic, "genuine-2").trim_start_matches('X')
    ));
    let m = c.try_recv(DB_WAIT).await.expect("the second relay arrives");
    assert_eq!(m.payload["event"], "genuine-2", "{m:?}");
}

#[tokio::test]
async fn a_monitoring_role_reads_no_secret() {
    let _turn = SERIAL.lock().await;
    let token = "e2e-metrics-token-0123456789";
    let _metrics = SystemSetting::set("realtime.metrics_token", token);
    let _conninfo = SystemSetting::set("realtime.primary_conninfo", "host=127.0.0.1 password=e2e-relay-password");
    attacker_role("e2e_monitor", "GRANT pg_monitor TO e2e_monitor;");
    let secrets = [SECRET, token, "e2e-relay-password", SECRET_KEY, PUBLISHABLE_KEY];
    let names = [
        "realtime.jwt_secret",
        "realtime.metrics_token",
        "realtime.primary_conninfo",
        "realtime.jwt_jwks",
        "realtime.api_keys",
    ];
    let mut seen = Vec::new();
    for name in names {
        for sql in [
            format!("SHOW {name}"),
            format!("SELECT current_setting('{name}')"),
            format!("SELECT current_setting('{name}', true)"),
            format!("SELECT s::text FROM pg_settings s WHERE name = '{name}'"),
            format!("SELECT s::text FROM pg_show_all_settings() s WHERE name = '{name}'"),
        ] {
            seen.push(psql_as("e2e_monitor", &sql).unwrap_or_else(|e| e));
        }
    }
    for sql in [
        "SHOW ALL",
        "SELECT string_agg(s::text, ' ') FROM pg_settings s",
        "SELECT string_agg(f::text, ' ') FROM pg_file_settings f",
        "SELECT pg_read_file('postgresql.auto.conf')",
        "SELECT pg_read_file('realtime_bus.key')",
    ] {
        seen.push(psql_as("e2e_monitor", sql).unwrap_or_else(|e| e));
    }
    let all = seen.join("\n");
    for secret in secrets {
        assert!(!all.contains(secret), "a pg_monitor member read {secret}:\n{all}");
    }
    assert!(psql_as("e2e_monitor", "SHOW realtime.jwt_secret").unwrap().contains("********"));
    // A superuser still sees the value.
    assert_eq!(psql("SHOW realtime.metrics_token"), token);
}

#[tokio::test]
async fn a_role_that_creates_in_public_plants_nothing_the_worker_runs() {
    let _turn = SERIAL.lock().await;
    attacker_role("e2e_planter", "GRANT CREATE ON SCHEMA public TO e2e_planter;");
    // Better matches than pg_catalog's for the calls the extension makes.
    let planted = r#"
        CREATE OR REPLACE FUNCTION public.to_char(date, text) RETURNS text LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e planted to_char ran as %', current_user; RETURN pg_catalog.to_char($1::timestamp, $2); END $f$;
        CREATE OR REPLACE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e planted unnest ran as %', current_user; RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
        CREATE OR REPLACE FUNCTION public.pg_has_role(text, text, text) RETURNS boolean LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e planted pg_has_role ran as %', current_user;
                RETURN pg_catalog.pg_has_role($1::name, $2::name, $3); END $f$;
        CREATE OR REPLACE FUNCTION public.set_config(text, text, bool) RETURNS text LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e planted set_config ran as %', current_user;
                RETURN pg_catalog.set_config($1, $2, $3); END $f$;
        CREATE OR REPLACE FUNCTION public.format(text, text, timestamp, timestamp) RETURNS text LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e planted format ran as %', current_user; RETURN pg_catalog.format($1, $2, $3, $4); END $f$;
    "#;
    psql_as("e2e_planter", planted).expect("the planter may create in public");
    let log = ServerLog::mark();
    psql("SELECT pg_reload_conf()");
    restart_worker().await;
    // The worker's maintenance and a client's private join, then a send.
    let topic = unique("trust:planted");
    let mut c = private_subscriber(&topic).await;
    psql(&format!("SELECT realtime.send('{{}}', 'e', '{topic}', true)"));
    c.try_recv(DB_WAIT).await.expect("the broadcast");
    psql("SELECT count(*) FROM realtime.create_partitions()");
    std::thread::sleep(Duration::from_millis(500));
    psql(
        "DROP FUNCTION public.to_char(date, text), public.unnest(text[]), public.pg_has_role(text, text, text),
                       public.set_config(text, text, bool), public.format(text, text, timestamp, timestamp);
         SELECT realtime.drop_old_partitions(now() - interval '1 day');",
    );
    let ran: Vec<String> = log.since().lines().filter(|l| l.contains("e2e planted")).map(str::to_owned).collect();
    let privileged: Vec<&String> = ran
        .iter()
        .filter(|l| {
            ["postgres", "realtime_worker", "realtime_admin"].iter().any(|r| l.ends_with(&format!("ran as {r}")))
        })
        .collect();
    assert!(privileged.is_empty(), "planted functions ran with privileges: {privileged:#?}");
}

#[tokio::test]
async fn a_table_owner_s_types_and_operators_run_only_as_the_subscriber() {
    let _turn = SERIAL.lock().await;
    attacker_role("e2e_owner", "GRANT CREATE ON SCHEMA public TO e2e_owner;");
    let table = unique("trust_owned").replace('-', "_");
    psql_as(
        "e2e_owner",
        &format!(
            r#"
        CREATE OR REPLACE FUNCTION public.e2e_tag_ok(text) RETURNS boolean LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e domain check in % ran as %', pg_backend_pid(), current_user; RETURN true; END $f$;
        DO $d$ BEGIN
          IF to_regtype('public.e2e_tag') IS NULL THEN
            CREATE DOMAIN public.e2e_tag AS text CHECK (public.e2e_tag_ok(VALUE));
          END IF;
        END $d$;
        CREATE OR REPLACE FUNCTION public.e2e_tag_eq(public.e2e_tag, public.e2e_tag) RETURNS boolean
          LANGUAGE plpgsql AS $f$
          BEGIN RAISE LOG 'e2e operator in % ran as %', pg_backend_pid(), current_user; RETURN $1::text = $2::text; END $f$;
        DO $o$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = '=' AND oprleft = 'public.e2e_tag'::regtype) THEN
            CREATE OPERATOR public.= (LEFTARG = public.e2e_tag, RIGHTARG = public.e2e_tag, FUNCTION = public.e2e_tag_eq);
          END IF;
        END $o$;
        CREATE TABLE public.{table} (id int PRIMARY KEY, v public.e2e_tag);
        GRANT SELECT ON public.{table} TO authenticated;
        "#
        ),
    )
    .expect("the owner makes its type and table");
    psql(&format!("ALTER PUBLICATION supabase_realtime ADD TABLE public.{table}"));
    let worker = worker_pid();
    let log = ServerLog::mark();
    let mut c = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": "u1"}))).await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": table, "filter": "v=eq.hello"}]);
    subscribed_changes(&mut c, &format!("realtime:{}", unique("owned")), bindings).await;
    psql(&format!("INSERT INTO public.{table} VALUES (1, 'other'), (2, 'hello')"));
    let change = next_change(&mut c).await;
    assert_eq!(change["data"]["record"]["id"], 2, "{change}");
    std::thread::sleep(Duration::from_millis(300));
    let in_worker: Vec<String> = log
        .since()
        .lines()
        .filter(|l| {
            l.contains(&format!("e2e domain check in {worker} ")) || l.contains(&format!("e2e operator in {worker} "))
        })
        .map(str::to_owned)
        .collect();
    assert!(!in_worker.is_empty(), "the worker cast and compared the filter value");
    let others: Vec<&String> = in_worker.iter().filter(|l| !l.ends_with("ran as authenticated")).collect();
    assert!(others.is_empty(), "the owner's code ran as someone else than the subscriber: {others:#?}");
}

#[tokio::test]
async fn three_thousand_idle_connections_do_not_keep_a_client_out() {
    let _turn = SERIAL.lock().await;
    let addr = format!("127.0.0.1:{}", ws_port());
    let mut idle = Vec::new();
    for _ in 0..3000 {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} failed: {e}", idle.len()),
        }
    }
    let started = std::time::Instant::now();
    let url = ws_url(Vsn::V2, &jwt("anon"));
    let connected = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await;
    let took = started.elapsed();
    drop(idle);
    let (ws, _) = connected.expect("connects within 5 s").expect("the upgrade succeeds");
    drop(ws);
    println!("with 3000 idle connections held, a client connected in {took:?}");
    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    c.join_ok(&format!("realtime:{}", unique("after-flood")), json!({})).await;
}

#[tokio::test]
async fn send_never_raises_into_the_caller() {
    let _turn = SERIAL.lock().await;
    let table = published_table("id int PRIMARY KEY");
    psql(&format!(
        "CREATE OR REPLACE FUNCTION public.{table}_broadcast() RETURNS trigger LANGUAGE plpgsql AS $f$
           BEGIN PERFORM realtime.broadcast_changes('trust', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD);
                 RETURN NEW; END $f$;
         CREATE TRIGGER broadcast AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION public.{table}_broadcast();"
    ));
    // Someone holds realtime.messages (a DBA, a migration) for 3 s.
    let holder = std::thread::spawn(|| {
        psql("BEGIN; LOCK TABLE realtime.messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;")
    });
    std::thread::sleep(Duration::from_millis(500));
    // A superuser's send takes the fast path; the user's write must not fail.
    let sent = try_psql(&format!(
        "SET lock_timeout = '200ms'; SELECT realtime.send('{{}}', 'e', 'trust', false);
         INSERT INTO {table} VALUES (1); SELECT count(*) FROM {table};"
    ));
    holder.join().unwrap();
    assert_eq!(sent.as_deref(), Ok("1"), "send raised into its caller: {sent:?}");
}

/// Superuser-like roles named as Supabase's, and a database owner who is
/// not a superuser, as `CREATE EXTENSION` finds them in a new database.
#[tokio::test]
async fn create_extension_grants_no_superuser_and_lets_the_owner_write_policies() {
    let _turn = SERIAL.lock().await;
    let port = pg_port();
    let _ = try_psql("DROP DATABASE IF EXISTS e2e_trust_install");
    attacker_role("e2e_dbowner", "ALTER ROLE service_role SUPERUSER; REVOKE service_role FROM realtime_worker;");
    psql("CREATE DATABASE e2e_trust_install OWNER e2e_dbowner");
    let installed = try_psql_in(&port, "e2e_trust_install", "CREATE EXTENSION realtime");
    let granted = psql("SELECT pg_has_role('realtime_worker', 'service_role', 'MEMBER')");
    let synced = try_psql("SELECT string_agg(r, ',') FROM realtime.sync_worker_roles('{}') r");
    let policy = try_psql_in(
        &port,
        "e2e_trust_install",
        "SET ROLE e2e_dbowner;
         CREATE POLICY owners_policy ON realtime.messages FOR SELECT TO authenticated USING (true);
         SELECT count(*) FROM pg_policies WHERE policyname = 'owners_policy'",
    );
    // Put things back before asserting.
    psql("ALTER ROLE service_role NOSUPERUSER");
    let _ = try_psql("DROP DATABASE e2e_trust_install");
    restart_worker().await;
    installed.expect("CREATE EXTENSION in a database owned by a non-superuser");
    assert_eq!(granted, "f", "a superuser named service_role was granted to realtime_worker");
    assert!(!synced.clone().unwrap().contains("service_role"), "the worker would assume it: {synced:?}");
    assert_eq!(policy.as_deref(), Ok("1"), "the database owner writes policies on realtime.messages: {policy:?}");
    // Back to normal: service_role tokens work again.
    assert_eq!(psql("SELECT pg_has_role('realtime_worker', 'service_role', 'MEMBER')"), "t");
}
