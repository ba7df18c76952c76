//! The table `make bench` prints and the BENCHMARKS.md and latency plot it writes.

use crate::client::Recorder;
use std::fmt::Write as _;
use std::time::Duration;

pub struct Figure {
    name: String,
    ours: String,
    peer: String,
    supabase: String,
    ratio: String,
    loadgen_cpu: String,
    /// The servers' CPU (realtime's worker, the peer's process) over the run.
    server_cpu: String,
    /// (label, ours p50/p95/p99, peer p50/p95/p99) for the plot.
    latency: Option<(String, [f64; 3], Option<[f64; 3]>)>,
}

fn cpu(percent: f64) -> String {
    if percent > 0.0 { format!("{percent:.0}%") } else { "—".into() }
}

fn ratio(ours: f64, peer: Option<f64>, higher_is_better: bool) -> String {
    match peer {
        Some(p) if p > 0.0 && ours > 0.0 => {
            let r = if higher_is_better { ours / p } else { p / ours };
            format!("{r:.1}×")
        }
        _ => "—".into(),
    }
}

impl Figure {
    pub fn rate(name: &str, unit: &str, ours: f64, peer: Option<f64>, supabase: &str, loadgen_cpu: f64) -> Figure {
        Figure {
            name: name.into(),
            ours: format!("{ours:.0} {unit}"),
            peer: peer.map(|p| format!("{p:.0} {unit}")).unwrap_or_else(|| "—".into()),
            supabase: supabase.into(),
            ratio: ratio(ours, peer, true),
            loadgen_cpu: cpu(loadgen_cpu),
            server_cpu: "—".into(),
            latency: None,
        }
    }

    pub fn latency(name: &str, ours: &Recorder, peer: Option<&Recorder>, supabase: &str) -> Figure {
        let p = |r: &Recorder| {
            let (a, b, c) = r.percentiles();
            [a, b, c]
        };
        let fmt = |v: [f64; 3]| format!("{:.2} / {:.2} / {:.2} ms", v[0], v[1], v[2]);
        let (o, q) = (p(ours), peer.map(p));
        Figure {
            name: format!("{name} (p50 / p95 / p99)"),
            ours: fmt(o),
            peer: q.map(fmt).unwrap_or_else(|| "—".into()),
            supabase: supabase.into(),
            ratio: ratio(o[1], q.map(|q| q[1]), false),
            loadgen_cpu: "—".into(),
            server_cpu: "—".into(),
            latency: Some((name.split(',').next().unwrap_or(name).into(), o, q)),
        }
    }

    pub fn bytes(name: &str, ours: f64, peer: Option<f64>, supabase: &str) -> Figure {
        let kb = |b: f64| format!("{:.1} KB", b / 1024.0);
        Figure {
            name: name.into(),
            ours: kb(ours),
            peer: peer.map(kb).unwrap_or_else(|| "—".into()),
            supabase: supabase.into(),
            ratio: ratio(ours, peer, false),
            loadgen_cpu: "—".into(),
            server_cpu: "—".into(),
            latency: None,
        }
    }

    pub fn text(name: &str, ours: &str, supabase: &str, loadgen_cpu: f64) -> Figure {
        Figure {
            name: name.into(),
            ours: ours.into(),
            peer: "—".into(),
            supabase: supabase.into(),
            ratio: "—".into(),
            loadgen_cpu: cpu(loadgen_cpu),
            server_cpu: "—".into(),
            latency: None,
        }
    }

    /// The peer's figure beside ours, with their ratio (above 1× is better).
    pub fn with_peer(mut self, peer: &str, ratio: f64) -> Figure {
        self.peer = peer.into();
        self.ratio = format!("{ratio:.1}×");
        self
    }

    /// Says how many of the expected deliveries arrived, when not all did.
    pub fn with_delivered(mut self, ours: u64, expected: u64, peer: Option<(u64, u64)>) -> Figure {
        let note = |got: u64, want: u64| {
            if got >= want { format!(" (all {want} delivered)") } else { format!(" (**{got}/{want} delivered**)") }
        };
        self.ours.push_str(&note(ours, expected));
        if let Some((got, want)) = peer {
            self.peer.push_str(&note(got, want));
        }
        self
    }

    pub fn with_server_cpu(mut self, ours: f64, peer: Option<f64>) -> Figure {
        self.server_cpu = match peer {
            Some(p) => format!("{ours:.0}% / {p:.0}%"),
            None => format!("{ours:.0}%"),
        };
        self
    }

    /// Puts the figure's latencies on the plot.
    pub fn with_plot(mut self, label: &str, ours: &Recorder, peer: Option<&Recorder>) -> Figure {
        let p = |r: &Recorder| {
            let (a, b, c) = r.percentiles();
            [a, b, c]
        };
        self.latency = Some((label.into(), p(ours), peer.map(p)));
        self
    }
}

#[derive(Default)]
pub struct Report {
    figures: Vec<Figure>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    // scripts/bench.sh exports the major; 17 and 18 run in a Debian chroot.
    let major = std::env::var("PG_VERSION").unwrap_or_else(|_| "15".into());
    let chroot = std::env::var("REALTIME_CHROOT").map(|suite| format!(" (Debian {suite} chroot)")).unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gb:.0} GiB, Debian 12, PostgreSQL {major}{chroot}")
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Report {
    pub fn add(&mut self, figure: Figure) {
        println!("  {}: {} | peer {} | ratio {}", figure.name, figure.ours, figure.peer, figure.ratio);
        self.figures.push(figure);
    }

    fn table(&self) -> String {
        let mut t = String::from(
            "| figure | realtime | peer (Node `ws` + LISTEN/NOTIFY) | Supabase published | ratio vs peer | server CPU (realtime / peer) | load generator CPU |\n|---|---|---|---|---|---|---|\n",
        );
        for f in &self.figures {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.name, f.ours, f.peer, f.supabase, f.ratio, f.server_cpu, f.loadgen_cpu
            );
        }
        t
    }

    /// A bar chart of p50/p95/p99 per latency figure, realtime beside the peer.
    fn plot(&self) -> String {
        let rows: Vec<_> = self.figures.iter().filter_map(|f| f.latency.clone()).collect();
        let max = rows.iter().flat_map(|(_, o, p)| o.iter().chain(p.iter().flatten())).fold(1.0f64, |a, &b| a.max(b));
        let (width, row_h, left) = (900.0, 110.0, 330.0);
        let height = 40.0 + rows.len() as f64 * row_h;
        let mut svg = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">Latency (ms): p50 / p95 / p99 — realtime (blue) vs peer (orange); scale 0–{max:.1} ms</text>"##
        );
        for (i, (label, ours, peer)) in rows.iter().enumerate() {
            let y0 = 40.0 + i as f64 * row_h;
            let _ = write!(
                svg,
                r##"<text x="10" y="{}">{}</text>"##,
                y0 + 14.0,
                label.replace('&', "&amp;").replace('<', "&lt;")
            );
            for (j, name) in ["p50", "p95", "p99"].iter().enumerate() {
                for (k, (values, color)) in
                    [(Some(ours), "#2f6fdf"), (peer.as_ref(), "#f08a24")].into_iter().enumerate()
                {
                    let Some(values) = values else { continue };
                    let y = y0 + 20.0 + (j * 2 + k) as f64 * 14.0;
                    let w = (values[j] / max * (width - left - 80.0)).max(1.0);
                    let _ = write!(
                        svg,
                        r##"<text x="{}" y="{}">{name}</text><rect x="{left}" y="{}" width="{w:.1}" height="11" fill="{color}"/><text x="{:.1}" y="{}">{:.2}</text>"##,
                        left - 40.0,
                        y + 10.0,
                        y,
                        left + w + 4.0,
                        y + 10.0,
                        values[j]
                    );
                }
            }
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// The table, printed only.
    pub fn print(&self) {
        println!("\n{}", self.table());
    }

    pub fn finish(&self, quick: bool, took: Duration, out: &str) {
        let table = self.table();
        println!("\n{table}");
        let plot = "bench/latency.svg";
        let _ = std::fs::write(format!("{out}/{plot}"), self.plot());
        let kind = if quick { "`make bench-quick` (reduced set)" } else { "`make bench` (full set)" };
        let doc = format!(
            "# Benchmarks\n\n{kind}, run {} on {}, in {:.0} s. All traffic on loopback; the load generator shares the machine \
             (its CPU use is beside each figure). The peer is the do-it-yourself bridge people build instead: a Node.js \
             `ws` server fed by `LISTEN/NOTIFY` (`bench/peer/`), run in the same invocation. Supabase's numbers are from its \
             published benchmarks (multi-node clusters, so they anchor rather than compare). Ratios are realtime ÷ peer for \
             rates and peer ÷ realtime for latency and memory, so above 1× is better.\n\n{table}\n![latency](bench/latency.svg)\n",
            today(),
            machine(),
            took.as_secs_f64()
        );
        // The analysis (targets missed, bottlenecks found by profiling) is
        // written by hand and kept beside the code.
        let notes = std::fs::read_to_string(format!("{out}/bench/NOTES.md")).unwrap_or_default();
        let _ = std::fs::write(format!("{out}/BENCHMARKS.md"), format!("{doc}\n{notes}"));
        println!("wrote {out}/BENCHMARKS.md and {out}/{plot}");
    }
}
