//! Tools around the product, not the request path: the throw-away PKI
//! (`signgate certs dev`, the demo and the tests), the provider stand-in
//! that recomputes every signature with its own code, `signgate demo`, and
//! the typed `gateway.toml` builder the demo and the tests write their
//! configurations with. Nothing on the request path imports this module.

pub mod config;
pub mod demo;
pub mod pki;
pub mod standin;
