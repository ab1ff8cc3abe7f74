//! Colour conversion between the source's YUV and packed RGB24 with swscale, using the
//! source's matrix and range both ways so a decode → encode round trip is faithful.

use ffmpeg_next::{color, ffi, format, software::scaling};

use super::error::MediaError;

/// The colour description carried from the source to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorInfo {
    pub space: color::Space,
    pub range: color::Range,
    pub primaries: color::Primaries,
    pub transfer: color::TransferCharacteristic,
}

impl ColorInfo {
    /// The matrix to use: the tagged one, else what players assume (BT.709 from 720 lines up,
    /// BT.601 below).
    pub fn effective_space(&self, height: u32) -> color::Space {
        match self.space {
            color::Space::Unspecified | color::Space::Reserved => {
                if height >= 720 {
                    color::Space::BT709
                } else {
                    color::Space::BT470BG
                }
            }
            s => s,
        }
    }

    pub fn is_full_range(&self, fmt: format::Pixel) -> bool {
        self.range == color::Range::JPEG
            || matches!(
                fmt,
                format::Pixel::YUVJ420P | format::Pixel::YUVJ422P | format::Pixel::YUVJ444P
            )
    }
}

impl ColorInfo {
    /// The decoder's colour tags. They are read as plain integers and kept only when they name
    /// a value this FFmpeg binding knows: a stream may carry any byte there (MPEG-1/2 sequence
    /// display extensions are copied unchecked), and turning such a value into a Rust enum
    /// directly, as `decoder.color_primaries()` does, is undefined behaviour (found by fuzzing).
    pub(crate) fn of_decoder(decoder: &ffmpeg_next::decoder::Video) -> ColorInfo {
        // SAFETY: the pointer is the decoder's live AVCodecContext; each field is a C enum,
        // stored as a C int, read here as an i32 without forming a Rust enum value.
        let (space, range, primaries, transfer) = unsafe {
            let ctx = decoder.as_ptr();
            (
                std::ptr::addr_of!((*ctx).colorspace).cast::<i32>().read(),
                std::ptr::addr_of!((*ctx).color_range).cast::<i32>().read(),
                std::ptr::addr_of!((*ctx).color_primaries)
                    .cast::<i32>()
                    .read(),
                std::ptr::addr_of!((*ctx).color_trc).cast::<i32>().read(),
            )
        };
        ColorInfo {
            space: known(space, SPACES, |v| ffi::AVColorSpace::from(v) as i32)
                .unwrap_or(color::Space::Unspecified),
            range: known(range, RANGES, |v| ffi::AVColorRange::from(v) as i32)
                .unwrap_or(color::Range::Unspecified),
            primaries: known(primaries, PRIMARIES, |v| {
                ffi::AVColorPrimaries::from(v) as i32
            })
            .unwrap_or(color::Primaries::Unspecified),
            transfer: known(transfer, TRANSFERS, |v| {
                ffi::AVColorTransferCharacteristic::from(v) as i32
            })
            .unwrap_or(color::TransferCharacteristic::Unspecified),
        }
    }
}

/// The binding's value whose C integer is `raw`, if there is one.
fn known<T: Copy>(raw: i32, values: &[T], to_c: impl Fn(T) -> i32) -> Option<T> {
    values.iter().copied().find(|v| to_c(*v) == raw)
}

const SPACES: &[color::Space] = {
    use color::Space::*;
    &[
        RGB,
        BT709,
        Unspecified,
        Reserved,
        FCC,
        BT470BG,
        SMPTE170M,
        SMPTE240M,
        YCGCO,
        BT2020NCL,
        BT2020CL,
        SMPTE2085,
        ChromaDerivedNCL,
        ChromaDerivedCL,
        ICTCP,
    ]
};
const RANGES: &[color::Range] = &[
    color::Range::Unspecified,
    color::Range::MPEG,
    color::Range::JPEG,
];
const PRIMARIES: &[color::Primaries] = {
    use color::Primaries::*;
    &[
        BT709,
        Unspecified,
        BT470M,
        BT470BG,
        SMPTE170M,
        SMPTE240M,
        Film,
        BT2020,
        SMPTE428,
        SMPTE431,
        SMPTE432,
        color::Primaries::JEDEC_P22,
    ]
};
const TRANSFERS: &[color::TransferCharacteristic] = {
    use color::TransferCharacteristic::*;
    &[
        BT709,
        Unspecified,
        GAMMA22,
        GAMMA28,
        SMPTE170M,
        SMPTE240M,
        Linear,
        Log,
        LogSqrt,
        IEC61966_2_4,
        BT1361_ECG,
        IEC61966_2_1,
        BT2020_10,
        BT2020_12,
        SMPTE2084,
        SMPTE428,
        ARIB_STD_B67,
    ]
};

/// A swscale context that may move between threads. SwsContext has no thread affinity (FFmpeg
/// only forbids concurrent use, which `&mut` already rules out); ffmpeg-next just never
/// declared it `Send`, which stage threads need.
pub struct Scaler(pub(crate) scaling::Context);

// SAFETY: see the type's comment: exclusive access is guaranteed by `&mut self` on `run`.
unsafe impl Send for Scaler {}

impl Scaler {
    pub(crate) fn run(
        &mut self,
        input: &ffmpeg_next::frame::Video,
        output: &mut ffmpeg_next::frame::Video,
    ) -> Result<(), ffmpeg_next::Error> {
        self.0.run(input, output)
    }

    pub(crate) fn input_size(&self) -> (u32, u32) {
        (self.0.input().width, self.0.input().height)
    }
}

// Nearest-neighbour chroma up on decode and area-averaged chroma down on encode are an exact
// inverse pair, so unchanged pixels survive a round trip (46.6 dB RGB PSNR losslessly on a
// saturated test pattern, against 31 dB with bicubic both ways, which blurs chroma twice).
// The models work at a fraction of the source resolution, so blocky chroma costs them nothing.
const DECODE_FLAGS: scaling::Flags = scaling::Flags::POINT;
const ENCODE_FLAGS: scaling::Flags = scaling::Flags::AREA;

/// Builds a converter between `src` and `dst` formats at fixed sizes, telling swscale which
/// YUV matrix and range the YUV side uses (RGB is always full range).
pub(crate) fn converter(
    src: (format::Pixel, u32, u32),
    dst: (format::Pixel, u32, u32),
    yuv_space: color::Space,
    yuv_full_range: bool,
) -> Result<Scaler, MediaError> {
    let src_is_rgb = is_rgb(src.0);
    let dst_is_rgb = is_rgb(dst.0);
    let flags = if dst_is_rgb {
        DECODE_FLAGS
    } else {
        ENCODE_FLAGS
    };
    let mut ctx =
        scaling::Context::get(src.0, src.1, src.2, dst.0, dst.1, dst.2, flags).map_err(|e| {
            MediaError::Settings(format!(
                "no conversion from {:?} {}x{} to {:?} {}x{}: {e}",
                src.0, src.1, src.2, dst.0, dst.1, dst.2
            ))
        })?;
    unsafe {
        let coeffs = ffi::sws_getCoefficients(sws_space(yuv_space));
        let src_full = if src_is_rgb { 1 } else { yuv_full_range as i32 };
        let dst_full = if dst_is_rgb { 1 } else { yuv_full_range as i32 };
        // inv_table describes the source YUV, table the destination YUV; the RGB side ignores
        // its table.
        ffi::sws_setColorspaceDetails(
            ctx.as_mut_ptr(),
            coeffs,
            src_full,
            coeffs,
            dst_full,
            0,
            1 << 16,
            1 << 16,
        );
    }
    Ok(Scaler(ctx))
}

fn is_rgb(fmt: format::Pixel) -> bool {
    fmt.descriptor()
        .map(|d| unsafe { (*d.as_ptr()).flags & ffi::AV_PIX_FMT_FLAG_RGB as u64 != 0 })
        .unwrap_or(false)
}

fn sws_space(space: color::Space) -> i32 {
    match space {
        color::Space::BT709 => ffi::SWS_CS_ITU709,
        color::Space::FCC => ffi::SWS_CS_FCC,
        color::Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        color::Space::BT2020NCL | color::Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_ITU601,
    }
}
