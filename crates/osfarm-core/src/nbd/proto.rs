//! The NBD wire protocol, the subset osfarm serves (docs/lazy-boot.md has the table):
//! fixed newstyle negotiation with `NBD_OPT_EXPORT_NAME`, `INFO`, `GO`, `LIST` and
//! `ABORT`; simple replies; a read-only export (`READ`, `FLUSH`, `DISC`; writes are
//! refused with `EPERM`, since qemu puts guest writes into a qcow2 overlay). All
//! integers are big-endian, as the protocol says.

use std::io::{self, Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FIXED_NEWSTYLE: u32 = 1;
const CLIENT_NO_ZEROES: u32 = 2;

// Options.
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

// Option replies.
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

// Information types.
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags: a read-only export whose content is the same on every connection.
const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 2;
const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_CAN_MULTI_CONN: u16 = 256;
pub const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Errors in replies (errno values fixed by the protocol).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// Largest request payload accepted, and the largest read: what qemu itself uses.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest option payload read during negotiation (names are at most 4 KiB by the spec).
const MAX_OPTION_LEN: u32 = 64 << 10;

/// What the negotiation needs to know about the one export a server offers.
pub struct ExportInfo<'a> {
    pub name: &'a str,
    pub size: u64,
    /// Preferred request granularity: the image's block size.
    pub block_size: u32,
}

impl ExportInfo<'_> {
    /// qemu asks for the export "" when the URI names none; that is ours too.
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn option_reply(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

/// Runs the fixed newstyle handshake. Returns true when the client entered the
/// transmission phase, false when it ended the negotiation (ABORT, or a listing).
/// A client that breaks the protocol gets an error and the connection is dropped.
pub fn negotiate(s: &mut (impl Read + Write), export: &ExportInfo<'_>) -> io::Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client = read_u32(s)?;
    if client & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(protocol_error(format!("unknown client flags {client:#x}")));
    }
    let no_zeroes = client & CLIENT_NO_ZEROES != 0;
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Err(protocol_error("option without IHAVEOPT"));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION_LEN {
            return Err(protocol_error(format!("option {option} of {len} bytes")));
        }
        let mut data = vec![0; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                // No way to refuse politely here: an unknown name closes the connection.
                if !export.matches(&data) {
                    return Err(protocol_error("unknown export name"));
                }
                let mut b = Vec::with_capacity(10 + 124);
                b.extend_from_slice(&export.size.to_be_bytes());
                b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    b.resize(b.len() + 124, 0);
                }
                s.write_all(&b)?;
                return Ok(true);
            }
            OPT_ABORT => {
                option_reply(s, option, REP_ACK, &[])?;
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, option, REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                option_reply(s, option, REP_SERVER, &d)?;
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some(name) = parse_info_request(&data) else {
                    option_reply(s, option, REP_ERR_INVALID, b"malformed INFO/GO request")?;
                    continue;
                };
                if !export.matches(name) {
                    option_reply(s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.size.to_be_bytes());
                info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                option_reply(s, option, REP_INFO, &info)?;
                // Sent unasked (the spec allows it): any alignment works, the image's
                // block size is best, and no request may exceed MAX_PAYLOAD.
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&export.block_size.to_be_bytes());
                bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                option_reply(s, option, REP_INFO, &bs)?;
                option_reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(true);
                }
            }
            // STARTTLS, STRUCTURED_REPLY, meta contexts, ...: simple replies only.
            _ => option_reply(s, option, REP_ERR_UNSUP, b"not supported by osfarm")?,
        }
    }
}

/// The export name of an INFO/GO payload (u32 length, name, u16 count, count × u16),
/// or None if the lengths do not add up.
fn parse_info_request(data: &[u8]) -> Option<&[u8]> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + n)?;
    let count = u16::from_be_bytes(data.get(4 + n..6 + n)?.try_into().ok()?) as usize;
    (data.len() == 6 + n + 2 * count).then_some(name)
}

/// One transmission-phase request header.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Reads the next request header; `Ok(None)` when the client closed the connection.
pub fn read_request(r: &mut impl Read) -> io::Result<Option<Request>> {
    let mut h = [0u8; 28];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if u32::from_be_bytes(h[0..4].try_into().unwrap()) != REQUEST_MAGIC {
        return Err(protocol_error("bad request magic"));
    }
    // h[4..6] are command flags (FUA, ...): meaningless on a read-only export.
    Ok(Some(Request {
        command: u16::from_be_bytes(h[6..8].try_into().unwrap()),
        cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
        offset: u64::from_be_bytes(h[16..24].try_into().unwrap()),
        length: u32::from_be_bytes(h[24..28].try_into().unwrap()),
    }))
}

/// Length of a simple reply's header; a read reply is this header followed by the data.
pub const REPLY_HEADER_LEN: usize = 16;

/// Writes a simple reply header into the first `REPLY_HEADER_LEN` bytes of `buf`.
pub fn put_reply_header(buf: &mut [u8], error: u32, cookie: u64) {
    buf[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&error.to_be_bytes());
    buf[8..16].copy_from_slice(&cookie.to_be_bytes());
}
