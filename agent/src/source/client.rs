//! The shared RTSP client (`rtsp_client = "shared"`): a camera received on the agent's
//! async runtime by the `retina` crate instead of by rtspsrc's four threads.
//!
//! ```text
//! RTSP/TCP ─▶ retina (depacketize to access units) ─[gate]─▶ appsrc ─▶ parse ─▶ decoder ─▶ … ─▶ appsink
//!             on the runtime, no thread of its own            the camera's decode-only pipeline (one thread)
//! ```
//! Only the frames the gate passes (due keyframes, mostly) are copied into GStreamer; the
//! rest never leave the runtime. The decode-only pipeline is built at the first frame,
//! when the stream's parameters are known, and its bus is followed like rtspsrc's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use retina::client::{Credentials, PlayOptions, Session, SessionOptions, SetupOptions};
use retina::codec::{CodecItem, ParametersRef};
use tokio_util::sync::CancellationToken;

use super::gate::Timeline;
use super::pipeline::{Decoding, Encoded, FrameFormat};
use super::{Fault, RunHealth, SourceError, on_bus_message};
use crate::camera::CameraCtx;
use crate::config::CameraConfig;
use crate::infer::queue::FrameQueue;

/// `url` without its user and password, and those as retina's credentials.
pub(super) fn split_credentials(url: &str) -> Result<(url::Url, Option<Credentials>), String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let creds = (!u.username().is_empty()).then(|| Credentials {
        username: crate::config::percent_decode(u.username()),
        password: crate::config::percent_decode(u.password().unwrap_or("")),
    });
    // Setting them can only fail for URLs that cannot have them, which parsed above.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    Ok((u, creds))
}

/// The codec of a stream retina describes, if the decode-only pipeline can take it.
fn encoded(encoding_name: &str) -> Option<Encoded> {
    match encoding_name.to_ascii_lowercase().as_str() {
        "h264" => Some(Encoded::H264),
        "h265" => Some(Encoded::H265),
        "jpeg" => Some(Encoded::Jpeg),
        _ => None,
    }
}

/// Whether an H.265 access unit (4-byte NAL lengths) holds an IRAP picture (NAL types 16
/// to 23: IDR, CRA, BLA), where decoding can start: retina's own flag misses some.
fn h265_irap(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some(nal) = tail.get(..len) else { return false };
        if nal.first().is_some_and(|b| (16..=23).contains(&((b >> 1) & 0x3f))) {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// A retina error as the camera's fault, with the first line of its text as the message
/// (the rest is connection and packet context for a packet capture, not for installers).
fn rtsp_error(camera: &str, e: &retina::Error) -> SourceError {
    let full = e.to_string();
    let message = full.lines().next().unwrap_or_default().to_string();
    SourceError::Stream {
        camera: camera.to_string(),
        element: "rtsp".into(),
        fault: fault_of(e.status_code(), &full),
        message,
    }
}

/// An RTSP status says it all; an error with a packet's context is a packet the
/// depacketizer refused (the camera sends what it cannot parse); else the text says.
fn fault_of(status: Option<u16>, text: &str) -> Fault {
    match status {
        Some(401) => Fault::Unauthorized,
        Some(403) => Fault::Forbidden,
        Some(404) => Fault::NotFound,
        _ if text.contains("\npkt: ") => Fault::Corrupt,
        _ => Fault::from_text(text.lines().next().unwrap_or_default()),
    }
}

/// One run of a camera through the shared client: set up the RTSP session, then hand
/// frames to the decode-only pipeline until an error, a stall, the end or shutdown.
pub(super) async fn run_once(
    cam: &CameraConfig,
    ctx: &Arc<CameraCtx>,
    format: FrameFormat,
    queue: &Arc<FrameQueue>,
    slot: usize,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    let camera = ctx.id.clone();
    let (url, creds) = split_credentials(&cam.url).map_err(|e| SourceError::build(&camera, e))?;
    let options = SessionOptions::default().creds(creds).user_agent(format!("lookout/{}", env!("CARGO_PKG_VERSION")));
    let setup = async {
        let mut session = Session::describe(url, options).await.map_err(|e| rtsp_error(&camera, &e))?;
        let Some(video) = session.streams().iter().position(|s| s.media() == "video") else {
            return Err(SourceError::Stream {
                camera: camera.clone(),
                element: "rtsp".into(),
                message: "the camera describes no video stream".into(),
                fault: Fault::Other,
            });
        };
        let name = session.streams()[video].encoding_name().to_string();
        let codec = encoded(&name).ok_or_else(|| SourceError::UnsupportedCodec {
            camera: camera.clone(),
            codec: name.to_ascii_uppercase(),
        })?;
        session.setup(video, SetupOptions::default()).await.map_err(|e| rtsp_error(&camera, &e))?;
        let playing = session.play(PlayOptions::default()).await.map_err(|e| rtsp_error(&camera, &e))?;
        let demuxed = playing.demuxed().map_err(|e| rtsp_error(&camera, &e))?;
        Ok((demuxed, video, codec))
    };
    // RTSP set-up gets what a starting pipeline gets: twice the stall limit.
    let limit = cam.stall * 2;
    let (mut demuxed, video, codec) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(limit, setup) => r.map_err(|_| SourceError::Stream {
            camera: camera.clone(),
            element: "rtsp".into(),
            message: format!("no RTSP session within {} s", limit.as_secs()),
            fault: Fault::Timeout,
        })??,
    };

    let mut decoding: Option<Decoding> = None;
    let mut bus: Option<gst::bus::BusStream> = None;
    // Per run: a new pipeline starts its running time over.
    let mut timeline = Timeline::default();
    let mut health = RunHealth::start(ctx, cam.stall);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        let next_message = async {
            match bus.as_mut() {
                Some(b) => b.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                if let Err(e) = health.check(ctx) {
                    break Err(e);
                }
            }
            msg = next_message => {
                let Some(msg) = msg else { break Err(SourceError::build(&camera, "bus closed")) };
                if let Some(end) = on_bus_message(&msg, &camera, &cam.url) {
                    break end;
                }
            }
            item = demuxed.next() => {
                let frame = match item {
                    None => break Err(SourceError::Eos { camera: camera.clone() }),
                    Some(Err(e)) => break Err(rtsp_error(&camera, &e)),
                    Some(Ok(CodecItem::VideoFrame(f))) if f.stream_id() == video => f,
                    Some(Ok(_)) => continue,
                };
                if decoding.is_none() || frame.has_new_parameters() {
                    let codec_data = match demuxed.streams()[video].parameters() {
                        Some(ParametersRef::Video(v)) => v.extra_data().to_vec(),
                        _ => Vec::new(),
                    };
                    match &decoding {
                        Some(d) => d.set_codec_data(codec, &codec_data),
                        None => {
                            let d = match Decoding::build(cam, ctx.clone(), format, queue.clone(), slot, codec, &codec_data) {
                                Ok(d) => d,
                                Err(e) => break Err(e),
                            };
                            let Some(b) = d.pipeline.bus() else { break Err(SourceError::build(&camera, "pipeline has no bus")) };
                            bus = Some(b.stream());
                            if let Err(e) = d.pipeline.set_state(gst::State::Playing) {
                                break Err(SourceError::build(&camera, e));
                            }
                            decoding = Some(d);
                        }
                    }
                }
                if let Some(d) = &decoding {
                    let is_key = match codec {
                        Encoded::H265 => frame.is_random_access_point() || h265_irap(frame.data()),
                        _ => frame.is_random_access_point(),
                    };
                    let ts = frame.timestamp();
                    let media_ns = i128::from(ts.elapsed()) * 1_000_000_000 / i128::from(ts.clock_rate().get());
                    let media_ns = media_ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                    d.offer(frame.into_data(), is_key, media_ns, &mut timeline);
                }
            }
        }
    };
    // Back to Null off the async workers, as the rtspsrc path does; dropping the session
    // closes its connection.
    if let Some(d) = decoding {
        let _ = tokio::task::spawn_blocking(move || d.pipeline.set_state(gst::State::Null)).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_percent_decoded() {
        let (u, c) = split_credentials("rtsp://ad%40min:p%3Ass@10.0.0.5:554/s?channel=1").expect("url");
        assert_eq!(u.as_str(), "rtsp://10.0.0.5:554/s?channel=1");
        let c = c.expect("credentials");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("ad@min", "p:ss"));
        let (u, c) = split_credentials("rtsp://10.0.0.5/s").expect("url");
        assert_eq!((u.as_str(), c.is_none()), ("rtsp://10.0.0.5/s", true));
    }

    #[test]
    fn retina_errors_are_classified_by_status_packet_context_or_text() {
        let describe = "401 response to DESCRIBE CSeq=1: Authentication requested\n\nconn: a\nmsg: b";
        assert_eq!(fault_of(Some(401), describe), Fault::Unauthorized);
        assert_eq!(fault_of(Some(404), "404 response to DESCRIBE"), Fault::NotFound);
        assert_eq!(fault_of(None, "bad nal header 5e\n\nconn: a\nstream: b\nssrc: c\nseq: 1\npkt: d"), Fault::Corrupt);
        assert_eq!(
            fault_of(None, "Unable to connect to RTSP server: Connection refused (os error 111)"),
            Fault::Refused
        );
        assert_eq!(fault_of(None, "Error reading from RTSP peer: early eof\n\nconn: a\nmsg: b"), Fault::Other);
    }

    #[test]
    fn h265_keyframes_are_found_by_their_nal_types() {
        let au = |types: &[u8]| -> Vec<u8> { types.iter().flat_map(|t| [0, 0, 0, 3, t << 1, 1, 0xaa]).collect() };
        // VPS, SPS, PPS, then a CRA slice; or a trailing (delta) slice alone.
        assert!(h265_irap(&au(&[32, 33, 34, 21])));
        assert!(h265_irap(&au(&[19])));
        assert!(!h265_irap(&au(&[1])));
        assert!(!h265_irap(&[0, 0, 0, 9, 40]), "a NAL longer than the data");
        assert!(!h265_irap(&[]));
    }

    #[test]
    fn only_h264_h265_and_jpeg_streams_are_taken() {
        assert_eq!(encoded("H264"), Some(Encoded::H264));
        assert_eq!(encoded("h265"), Some(Encoded::H265));
        assert_eq!(encoded("jpeg"), Some(Encoded::Jpeg));
        assert_eq!(encoded("mpeg4-generic"), None);
    }
}
