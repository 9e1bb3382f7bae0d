//! Confab: a real-time chat server on the actor model.
//!
//! A [`node::Node`] is one [`hub::ChatServer`] actor, one
//! [`session::WsSession`] actor per socket, an event [`writer`] committing to
//! a [`store`], and a [`bus`] to its peers. `src/main.rs` parses the command
//! line ([`config`]) and runs a node; docs/architecture.md walks one message
//! through these modules.

pub mod auth;
pub mod bus;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod messages;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod session;
pub mod store;
pub mod writer;

pub use node::Node;
