//! Authorization as the client's role, on the main thread: acting as a
//! token's role and claims (`rls`), private-channel probes and Postgres
//! Changes subscriptions checked (`subscribe`), and row changes routed to the
//! channels whose bindings and policies admit them (`route`).

pub mod rls;
pub mod route;
pub mod subscribe;
