//! Scenario 10: a primary and two hot standbys (`scripts/nodes.sh`, started
//! for this scenario only, ports from the environment `scripts/bench.sh`
//! sets): what a standby adds from commit to client, the primary's WAL per
//! event with and without `realtime.bus`, and client fan-out with the
//! receivers on one node against spread over three.

use crate::client::{Recorder, broadcast_frame, connect, join, now_us, send};
use crate::report::Figure;
use crate::{Bench, Target, cpu_seconds, jwt, process_cpu_seconds, source};
use futures_util::StreamExt;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

struct Nodes {
    primary_pg: String,
    targets: [Target; 3],
}

fn env_port(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the benchmark through scripts/bench.sh"))
}

fn nodes_script(action: &str) {
    let out = Command::new("scripts/nodes.sh").arg(action).output().expect("scripts/nodes.sh runs");
    assert!(
        out.status.success(),
        "scripts/nodes.sh {action} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Bench {
    fn nodes(&self) -> Nodes {
        let primary_pg = env_port("PRIMARY_PG_PORT");
        let worker = |pg: &str| self.psql_at(pg, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'");
        let target = |name: &'static str, prefix: &str| {
            let pid = worker(&env_port(&format!("{prefix}_PG_PORT"))).parse().unwrap_or(0);
            let port = env_port(&format!("{prefix}_WS_PORT")).parse().expect("a port");
            Target { name, port, pid }
        };
        let targets = [target("primary", "PRIMARY"), target("standby1", "STANDBY1"), target("standby2", "STANDBY2")];
        Nodes { primary_pg, targets }
    }

    pub async fn scenario_nodes(&mut self) {
        nodes_script("start");
        let nodes = self.nodes();
        // Workers that just started hold database broadcasts (restart_grace).
        tokio::time::sleep(Duration::from_secs(6)).await;
        self.nodes_latency(&nodes).await;
        self.nodes_fan_out(&nodes).await;
        nodes_script("stop");
    }

    /// 100 subscribers on the primary and 100 on a standby, 1,000 inserts/s,
    /// each sending one broadcast from its trigger; then the same inserts
    /// with `realtime.bus` off, for the WAL it adds.
    async fn nodes_latency(&mut self, nodes: &Nodes) {
        let pg = &nodes.primary_pg;
        self.psql_at(
            pg,
            "CREATE TABLE IF NOT EXISTS bench_node_rows (id bigserial PRIMARY KEY, topic text, t bigint);
             CREATE OR REPLACE FUNCTION bench_node_send() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM realtime.send(jsonb_build_object('t', NEW.t), 'INSERT', NEW.topic, false); RETURN NULL; END $$;
             DROP TRIGGER IF EXISTS send ON bench_node_rows;
             CREATE TRIGGER send AFTER INSERT ON bench_node_rows FOR EACH ROW EXECUTE FUNCTION bench_node_send();",
        );
        let (rate, seconds) = (1000, if self.quick { 3 } else { 6 });
        let topic = format!("nodes-{}", now_us());
        let (on_primary, on_standby) = (Recorder::default(), Recorder::default());
        let key = jwt("anon", "n");
        let full = format!("realtime:{topic}");
        let _p = self.subscribers(&nodes.targets[0], 100, &full, json!({}), &key, &on_primary).await;
        let _s = self.subscribers(&nodes.targets[1], 100, &full, json!({}), &key, &on_standby).await;
        let lsn = |b: &Bench| b.psql_at(pg, "SELECT pg_current_wal_lsn() - '0/0'").parse::<f64>().unwrap_or(0.0);
        let before = lsn(self);
        let (rows, _) = self.pgbench_at(pg, "bench_node_rows", &topic, rate, seconds);
        let wal_with_bus = (lsn(self) - before) / rows.max(1) as f64;
        on_primary.wait_for(rows * 100, Duration::from_secs(20)).await;
        on_standby.wait_for(rows * 100, Duration::from_secs(20)).await;
        let describe = |r: &Recorder| {
            let (p50, p95, p99) = r.percentiles();
            format!("{p50:.2} / {p95:.2} / {p99:.2} ms ({}/{} delivered)", r.count(), rows * 100)
        };
        let added = on_standby.percentiles().0 - on_primary.percentiles().0;
        println!("  commit → client at {rate}/s: standby {}, primary {}", describe(&on_standby), describe(&on_primary));
        self.report.add(Figure::text(
            &format!("10. database → 100 subscribers on a hot standby at {rate} inserts/s (fsync on)"),
            &format!(
                "standby {}; the primary's own 100 sockets {}; the standby adds {added:.2} ms at p50",
                describe(&on_standby),
                describe(&on_primary)
            ),
            "target: a standby adds ≤ 2 ms",
            0.0,
        ));

        // The same inserts without the bus: what it adds to the primary's WAL.
        self.psql_at(pg, "ALTER SYSTEM SET realtime.bus = off");
        self.psql_at(pg, "SELECT pg_reload_conf()");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = lsn(self);
        let (rows_off, _) = self.pgbench_at(pg, "bench_node_rows", &format!("{topic}-off"), rate, 2);
        let wal_without = (lsn(self) - before) / rows_off.max(1) as f64;
        self.psql_at(pg, "ALTER SYSTEM RESET realtime.bus");
        self.psql_at(pg, "SELECT pg_reload_conf()");
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("  primary WAL per insert: {wal_with_bus:.0} B with the bus, {wal_without:.0} B without");
        self.report.add(Figure::text(
            "10. the primary's WAL per database broadcast (insert + trigger's realtime.send)",
            &format!(
                "{wal_with_bus:.0} B with realtime.bus, {wal_without:.0} B without (+{:.0} B)",
                wal_with_bus - wal_without
            ),
            "—",
            0.0,
        ));
    }

    /// One sender on the primary, 300 receivers: all on the primary, then
    /// 100 on each node (client broadcasts cross nodes through the bus).
    async fn nodes_fan_out(&mut self, nodes: &Nodes) {
        let messages = if self.quick { 100 } else { 200 };
        let mut figures = Vec::new();
        for spread in [false, true] {
            let topic = format!("realtime:nodes-fan-{spread}-{}", now_us());
            let rec = Recorder::default();
            let key = jwt("anon", "r");
            let mut held = Vec::new();
            for (i, t) in nodes.targets.iter().enumerate() {
                let n = if spread {
                    100
                } else if i == 0 {
                    300
                } else {
                    0
                };
                held.push(self.subscribers(t, n, &topic, json!({}), &key, &rec).await);
            }
            let primary = &nodes.targets[0];
            let mut sender = connect(&primary.url(&jwt("anon", "s")), primary.addr(), source()).await.unwrap();
            join(&mut sender, &topic, json!({"broadcast": {"self": false}}), None).await;
            let (mut sink, _stream) = sender.split();
            let pad = "x".repeat(1024);
            let cpu = |targets: &[Target]| targets.iter().map(|t| process_cpu_seconds(t.pid)).sum::<f64>();
            let (cpu0, server0, start) = (cpu_seconds(), cpu(&nodes.targets), Instant::now());
            for _ in 0..messages {
                send(&mut sink, broadcast_frame(&topic, "b", &pad)).await;
            }
            let expected = 300 * messages as u64;
            rec.wait_for(expected, Duration::from_secs(60)).await;
            let elapsed = start.elapsed().as_secs_f64();
            let rate = rec.count() as f64 / elapsed;
            let server = (cpu(&nodes.targets) - server0) / elapsed * 100.0;
            let loadgen = (cpu_seconds() - cpu0) / elapsed * 100.0;
            println!(
                "  fan-out, receivers {}: {rate:.0} deliveries/s ({}/{expected}), workers' CPU {server:.0}%",
                if spread { "over three nodes" } else { "on the primary" },
                rec.count()
            );
            figures.push((rate, rec.count(), expected, server, loadgen));
        }
        let [(one, got1, exp1, cpu1, _), (three, got3, exp3, cpu3, loadgen)] = [figures[0], figures[1]];
        self.report.add(
            Figure::text(
                "10. fan-out, 1 sender on the primary → 300 receivers (1 KB), receivers over 3 nodes against 1 node",
                &format!(
                    "3 nodes: {three:.0} deliveries/s ({got3}/{exp3}), workers' CPU {cpu3:.0}%; \
                     1 node: {one:.0} deliveries/s ({got1}/{exp1}), CPU {cpu1:.0}%; {:.2}× (2 shared cores)",
                    three / one.max(1.0)
                ),
                "≈224,000 msgs/s (multi-node cluster)",
                loadgen,
            )
            .with_server_cpu(cpu3, None),
        );
    }
}
