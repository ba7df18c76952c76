//! Answers the network side's requests on the main thread, each in its own
//! subtransaction (inside the functions it calls).

use super::{rls, subscribe};
use crate::bridge::Request;
use crate::changes::registry::{ChannelBindings, Registry};

pub fn answer(request: Request, registry: &mut Registry) {
    // A dropped receiver means the asker went away; nothing to do.
    match request {
        Request::ReadPermissions { ctx, topic, presence, reply } => {
            let _ = reply.send(rls::read_permissions(&ctx, &topic, presence));
        }
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
    }
}
