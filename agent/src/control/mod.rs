//! Remote control over MQTT (issue 6): command parsing and replies. The handlers that
//! act on cameras and models build on [`command`].

pub mod command;
