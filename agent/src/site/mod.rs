//! A site of many gateways coordinated through etcd (`[site]`): the key layout and records
//! ([`record`]), the assignment policy ([`assign`]), the fencing rule a gateway applies to
//! its own lease ([`lease`]), the connection ([`etcd`]), the task that ties them together
//! ([`coordinator`]), its metrics ([`metrics`]) and the operators' commands ([`admin`]).

pub mod admin;
pub mod assign;
pub mod coordinator;
pub mod etcd;
pub mod lease;
pub mod metrics;
pub mod record;

pub use coordinator::{Reported, SiteHandle, Wanted};
