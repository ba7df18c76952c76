//! Row Level Security checks for private channels, run on the worker's main
//! thread through SPI, each in a subtransaction that is rolled back: the same
//! probes Supabase Realtime runs, so the same policies on `realtime.messages`
//! apply.

use crate::bridge::{AuthContext, Extension, ReadPermissions, StoredBroadcast};
use crate::pg::subxact::{as_text, rolled_back};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The role the worker acts as for clients (created by the extension).
pub const WORKER_ROLE: &str = "realtime_worker";
/// The owner of `realtime.messages` (created by the extension).
const OWNER_ROLE: &str = "realtime_admin";

/// For the rest of the (sub)transaction, act as `realtime_worker` rather than
/// as the superuser the worker connects as: a client's role can then only be
/// one `realtime_worker` is a member of.
pub fn act_for_clients() {
    act_as(WORKER_ROLE);
}

/// The worker's session (a superuser's login) changes its session user, so
/// a client's role is then one `role` may become; `realtime_relay`, which
/// cannot, changes its current role, and may become what its memberships
/// allow. Asked of the login, not the session user: after [`act_as_owner`]
/// the session user is `realtime_admin` for the rest of the subtransaction.
fn act_as(role: &str) {
    // SAFETY: reads the login's role, in a transaction.
    let superuser_session = unsafe { pg_sys::superuser_arg(pg_sys::GetAuthenticatedUserId()) };
    set_local(if superuser_session { "session_authorization" } else { "role" }, role);
}

/// For the rest of the (sub)transaction, act as the owner of
/// `realtime.messages`: its defaults, checks and triggers, which its owner
/// (and the database owner, a member) may change, run as that owner alone,
/// and its policies do not apply.
fn act_as_owner() {
    act_as(OWNER_ROLE);
}

/// Sets what policies read, for the transaction: `role`, `realtime.topic`,
/// and the claims (`request.jwt.claims`, `request.jwt.claim.sub`,
/// `request.jwt.claim.role`), acting for clients. Set directly rather than
/// through SQL: routing does this once per group of subscribers. A role the
/// worker may not assume raises.
pub fn assume(ctx: &AuthContext, topic: &str) {
    act_for_clients();
    set_local("role", &ctx.role);
    // What the client's own session would resolve names with; only now that
    // whatever it finds runs as the client's role.
    set_local("search_path", crate::pg::maintenance::client_search_path());
    set_local("realtime.topic", topic);
    assume_claims(ctx);
}

/// `request.headers` for a private-channel check, as Supabase sets it: the
/// request's `x-` headers (`{}` without any).
fn assume_headers(ctx: &AuthContext) {
    set_local("request.headers", ctx.headers.as_deref().unwrap_or("{}"));
}

/// The claims alone, for a role already assumed.
pub fn assume_claims(ctx: &AuthContext) {
    set_local("request.jwt.claims", &ctx.claims_json);
    set_local("request.jwt.claim.sub", ctx.sub.as_deref().unwrap_or_default());
    set_local("request.jwt.claim.role", &ctx.role);
}

/// `set_config(name, value, true)`, as the worker's session.
fn set_local(name: &str, value: &str) {
    let (name, value) = (to_cstring(name), to_cstring(value));
    // SAFETY: main thread, in a transaction; errors (an unknown role) are
    // raised as ERRORs, caught by the caller's subtransaction.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// Claims are JSON text and cannot hold NUL; anything that does is cut there.
fn to_cstring(s: &str) -> std::ffi::CString {
    let end = s.find('\0').unwrap_or(s.len());
    std::ffi::CString::new(&s[..end]).expect("no NUL before the cut")
}

/// A read check: may `ctx` read `topic` (and its presence, when asked)?
pub struct ReadProbe<'a> {
    pub ctx: &'a AuthContext,
    pub topic: &'a str,
    pub presence: bool,
}

/// Inserts probe rows as `realtime_admin` (their owner: RLS does not apply),
/// then selects them back under each subscriber's role: the rows it can see
/// are the extensions it may read. Joins that arrive together are probed in
/// one subtransaction, with one insert and one prepared select; if anything
/// in it fails (a broken policy), each is probed alone, so a failure denies
/// only its own join.
pub fn read_permissions(probes: &[ReadProbe]) -> Vec<Result<ReadPermissions, String>> {
    if probes.len() > 1
        && let Ok(Ok(all)) = rolled_back(|| probe_reads(probes))
    {
        return all.into_iter().map(Ok).collect();
    }
    probes
        .iter()
        .map(|probe| as_text(rolled_back(|| probe_reads(std::slice::from_ref(probe)))).map(|mut one| one.remove(0)))
        .collect()
}

fn probe_reads(probes: &[ReadProbe]) -> Result<Vec<ReadPermissions>, pgrx::spi::Error> {
    Spi::connect_mut(|client| {
        act_as_owner();
        let new_id = || pgrx::Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes());
        let ids: Vec<(pgrx::Uuid, pgrx::Uuid)> = probes.iter().map(|_| (new_id(), new_id())).collect();
        let (mut all_ids, mut topics, mut extensions) = (Vec::new(), Vec::new(), Vec::new());
        for (probe, (broadcast_id, presence_id)) in probes.iter().zip(&ids) {
            all_ids.push(*broadcast_id);
            topics.push(probe.topic);
            extensions.push("broadcast");
            if probe.presence {
                all_ids.push(*presence_id);
                topics.push(probe.topic);
                extensions.push("presence");
            }
        }
        let args: [DatumWithOid; 3] = [all_ids.into(), topics.into(), extensions.into()];
        client.update(
            "INSERT INTO realtime.messages (id, topic, extension)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])",
            None,
            &args,
        )?;
        let uuid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);
        let seen = client.prepare(
            "SELECT coalesce(bool_or(id = $1), false), coalesce(bool_or(id = $2), false)
             FROM realtime.messages WHERE id IN ($1, $2)",
            &[uuid, uuid],
        )?;
        let mut out = Vec::with_capacity(probes.len());
        for (probe, (broadcast_id, presence_id)) in probes.iter().zip(ids) {
            assume(probe.ctx, probe.topic);
            assume_headers(probe.ctx);
            let args: [DatumWithOid; 2] = [broadcast_id.into(), presence_id.into()];
            let (broadcast, presence) = client.select(&seen, None, &args)?.first().get_two::<bool, bool>()?;
            out.push(ReadPermissions { broadcast: broadcast.unwrap_or(false), presence: presence.unwrap_or(false) });
        }
        Ok(out)
    })
}

/// Tries the insert a send would do, under the subscriber's role.
pub fn write_permission(ctx: &AuthContext, topic: &str, extension: Extension) -> Result<bool, String> {
    let inserted = rolled_back(|| {
        Spi::connect_mut(|client| {
            assume(ctx, topic);
            assume_headers(ctx);
            let args: [DatumWithOid; 2] = [topic.into(), extension.as_str().into()];
            client.update("INSERT INTO realtime.messages (topic, extension) VALUES ($1, $2)", None, &args)?;
            Ok::<_, pgrx::spi::Error>(())
        })
    });
    match inserted {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e.to_string()),
        // An RLS denial (42501) is an answer, not a failure.
        Err(e) if e.is_denial() => Ok(false),
        Err(e) => Err(e.message),
    }
}

/// Stored private broadcasts of `topic` since `since_ms` (unix ms), at most
/// `limit` of the newest, oldest first, as the subscriber may read them.
pub fn replay(ctx: &AuthContext, topic: &str, since_ms: i64, limit: i64) -> Result<Vec<StoredBroadcast>, String> {
    let rows = rolled_back(|| {
        Spi::connect_mut(|client| {
            assume(ctx, topic);
            let args: [DatumWithOid; 3] = [topic.into(), since_ms.into(), limit.into()];
            client
                .select(
                    "SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'event', event, 'payload', payload,
                                                                  'binary', encode(binary_payload, 'base64'))
                                              ORDER BY inserted_at), '[]')
                     FROM (SELECT id, event, payload, binary_payload, inserted_at FROM realtime.messages
                           WHERE topic = $1 AND private AND extension = 'broadcast'
                             AND inserted_at >= timezone('utc', to_timestamp($2 / 1000.0))
                             AND inserted_at < timezone('utc', now()) + interval '1 minute'
                           ORDER BY inserted_at DESC LIMIT $3) newest",
                    None,
                    &args,
                )?
                .first()
                .get_one::<pgrx::JsonB>()
        })
    })
    .map_err(String::from)?
    .map_err(|e| e.to_string())?;
    let rows = rows.map(|j| j.0).unwrap_or_default();
    let rows = rows.as_array().cloned().unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|row| StoredBroadcast {
            id: row["id"].as_str().unwrap_or_default().to_owned(),
            event: row["event"].as_str().unwrap_or_default().to_owned(),
            payload: row["payload"].clone(),
            binary: row["binary"].as_str().and_then(|b| {
                use base64::Engine;
                // encode(…, 'base64') breaks lines every 76 characters.
                base64::engine::general_purpose::STANDARD.decode(b.replace('\n', "")).ok()
            }),
        })
        .collect())
}
