//! A site of many gateways coordinated through etcd (`[site]`). Built so far: the fencing
//! rule a gateway applies to its own lease ([`lease`]). Membership, the camera inventory,
//! assignment and failover build on it.

pub mod assign;
pub mod lease;
