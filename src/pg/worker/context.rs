//! What both roles of the worker use: the network side's handle, the memory
//! budget, the settings, the Postgres Changes registry, the catalog caches'
//! state and the main thread's figures; and the routing of decoded rows into
//! what the network side sends.

use super::figures::Figures;
use crate::bridge::{Budget, Decoded, Network, Settings, log};
use crate::changes::RowChange;
use crate::changes::registry::Registry;
use crate::pg::authz::route;
use crate::pg::decoding::Caches;
use crate::pg::{conflict, recovery, settings};
use crate::row_format::Row;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};
use std::time::Instant;

pub struct Context {
    pub network: Box<dyn Network>,
    /// The network side's log lines, written here with ereport.
    pub log_lines: mpsc::Receiver<(log::Level, String)>,
    pub budget: Arc<Budget>,
    pub settings: Settings,
    pub registry: Registry,
    pub caches: Caches,
    pub figures: Figures,
    /// The timeline last seen: a new one is announced to every channel.
    pub timeline: u32,
    /// A commit woke the worker, or the last step stopped short.
    pub decode_due: bool,
}

impl Context {
    pub fn new(
        network: Box<dyn Network>,
        budget: Arc<Budget>,
        settings: Settings,
        log_lines: mpsc::Receiver<(log::Level, String)>,
    ) -> Context {
        Context {
            network,
            log_lines,
            budget,
            settings,
            registry: Registry::default(),
            caches: Caches::default(),
            figures: Figures::new(Instant::now()),
            timeline: recovery::epoch().1,
            decode_due: true,
        }
    }

    /// Runs SPI work in a transaction of its own, after the caches are made
    /// right for present-time reads.
    pub fn in_transaction<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.caches.before_query();
        BackgroundWorker::transaction(AssertUnwindSafe(f))
    }

    /// A promotion, or a standby following a new primary, starts a timeline.
    pub fn announce_new_epoch(&mut self) {
        let (system_identifier, timeline) = recovery::epoch();
        if timeline != self.timeline && timeline != 0 {
            log!("realtime: new epoch: timeline {timeline} (was {})", self.timeline);
            self.timeline = timeline;
            self.network.new_epoch(system_identifier, timeline);
        }
    }

    /// The decoded rows as the network side sends them, in commit order: row
    /// changes routed to the channels whose bindings and policies admit them.
    /// `positions` are the rows' positions on the bus, if they are on it.
    pub fn outgoing(&mut self, rows: Vec<Row>, positions: &[u64]) -> Vec<Decoded> {
        enum Item {
            Decoded(Decoded),
            Change(usize),
        }
        let mut order = Vec::with_capacity(rows.len());
        let mut changes = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            let position = positions.get(i).copied().unwrap_or(0);
            match row {
                Row::Broadcast(json) => order.push(Item::Decoded(Decoded::Broadcast(json, position))),
                Row::Relayed(row, at) => {
                    order.push(Item::Decoded(Decoded::Relayed(row, if at != 0 { at } else { position })))
                }
                Row::Change(json) => match RowChange::parse(&json) {
                    Ok(change) => {
                        order.push(Item::Change(changes.len()));
                        changes.push(change);
                    }
                    Err(e) => warning!("realtime: skipping an undecodable row change: {e}"),
                },
                Row::Commit { .. } => {}
            }
        }
        let mut routed = if changes.is_empty() {
            Vec::new()
        } else {
            let registry = &self.registry;
            let max_record_bytes = settings::max_record_bytes();
            self.caches.before_query();
            let mut checks = Vec::new();
            let routed = conflict::retried(|| {
                checks.clear();
                route::route(registry, &changes, max_record_bytes, &mut checks)
            });
            for (took, count) in checks {
                self.figures.checked(took, count);
            }
            routed
        };
        let mut out = Vec::with_capacity(order.len());
        for item in order {
            match item {
                Item::Decoded(item) => out.push(item),
                Item::Change(i) => out.extend(std::mem::take(&mut routed[i]).into_iter().map(Decoded::Change)),
            }
        }
        out
    }
}
