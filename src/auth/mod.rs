//! Authentication of Realtime clients.

pub mod jwt;
pub mod rls;
