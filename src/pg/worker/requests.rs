//! Answers the network side's requests on the main thread, each in its own
//! subtransaction (inside the functions it calls).

use crate::bridge::Request;
use crate::changes::registry::{ChannelBindings, Registry};
use crate::pg::authz::{rls, subscribe};
use crate::pg::bus;
use crate::pg::interrupts::shutdown_requested;

/// Answers requests in order, but read checks (joins) first, together:
/// nothing else a socket asks for waits on its own join's answer.
pub fn answer_all(requests: Vec<Request>, registry: &mut Registry) {
    let (reads, others): (Vec<Request>, Vec<Request>) =
        requests.into_iter().partition(|r| matches!(r, Request::ReadPermissions { .. }));
    let mut reads = reads.into_iter().peekable();
    while reads.peek().is_some() && !shutdown_requested() {
        answer_reads(reads.by_ref().take(READS_TOGETHER).collect());
    }
    for request in others {
        if shutdown_requested() {
            break; // the askers see the worker go away
        }
        answer(request, registry);
    }
}

/// Read checks probed in one subtransaction, under one statement timeout.
const READS_TOGETHER: usize = 64;

fn answer_reads(reads: Vec<Request>) {
    let mut probes = Vec::with_capacity(reads.len());
    let mut replies = Vec::with_capacity(reads.len());
    for read in &reads {
        if let Request::ReadPermissions { ctx, topic, presence, .. } = read {
            probes.push(rls::ReadProbe { ctx, topic, presence: *presence });
        }
    }
    let answers = rls::read_permissions(&probes);
    drop(probes);
    for read in reads {
        if let Request::ReadPermissions { reply, .. } = read {
            replies.push(reply);
        }
    }
    // A dropped receiver means the asker went away; nothing to do.
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn answer(request: Request, registry: &mut Registry) {
    // A dropped receiver means the asker went away; nothing to do.
    match request {
        Request::ReadPermissions { .. } => answer_reads(vec![request]),
        Request::WritePermission { ctx, topic, extension, reply } => {
            let _ = reply.send(rls::write_permission(&ctx, &topic, extension));
        }
        Request::SubscribeChanges { channel, ctx, bindings, reply } => {
            let requested: Vec<subscribe::Requested> =
                bindings.iter().map(|(id, binding)| subscribe::Requested { id: *id, binding }).collect();
            let checked = subscribe::validate(&ctx, &requested);
            let answer = checked.map(|bindings| registry.add(channel, ChannelBindings { ctx, bindings }));
            let _ = reply.send(answer);
        }
        Request::UnsubscribeChanges { channel } => registry.remove(channel),
        Request::ChangesAuth { channel, ctx } => registry.set_ctx(channel, ctx),
        Request::Replay { ctx, topic, since_ms, limit, reply } => {
            let _ = reply.send(rls::replay(&ctx, &topic, since_ms, limit));
        }
        Request::BusRelay(rows) => bus::write_relayed(&rows),
        Request::Resume { topic, private, after, system_identifier, timeline, reply } => {
            let _ = reply.send(bus::resume(&topic, private, after, system_identifier.as_deref(), timeline));
        }
    }
}
