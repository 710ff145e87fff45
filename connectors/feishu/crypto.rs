//! Feishu/Lark cryptography, all pure functions: body decryption (AES-256-CBC), the
//! event signature (SHA-256), the legacy card-URL signature (SHA-1), the custom group
//! bot's `sign`, and a constant-time string comparison.
//!
//! Sits at the very edge of the flow: **connector (in)** checks and opens a request
//! with these before anything is parsed or stored. Every formula is from
//! `../shared/refs/chat-platforms.md` §0, §1.4, §1.5 and §3, and the §7 test vectors are
//! the unit tests below.

#[cfg(test)]
use aes::cipher::BlockModeEncrypt;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
#[cfg(test)]
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Why an `{"encrypt": …}` body could not be opened. The messages never include key
/// material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecryptError {
    #[error("`encrypt` is not base64")]
    Base64,
    #[error("ciphertext has {0} bytes; expected a 16-byte IV plus whole 16-byte blocks")]
    Length(usize),
    #[error("bad padding (wrong encrypt_key?)")]
    Padding,
    #[error("plaintext is not UTF-8 (wrong encrypt_key?)")]
    Utf8,
}

/// `key = SHA-256(utf8(encrypt_key))` (refs §1.4 step 1).
fn aes_key(encrypt_key: &str) -> [u8; 32] {
    Sha256::digest(encrypt_key.as_bytes()).into()
}

/// Open Feishu's `encrypt` value: base64 → IV (first 16 bytes) ‖ AES-256-CBC ciphertext,
/// PKCS#7-padded (refs §1.4).
pub fn decrypt(encrypt_key: &str, encrypted_b64: &str) -> Result<String, DecryptError> {
    let raw = B64
        .decode(encrypted_b64.trim())
        .map_err(|_| DecryptError::Base64)?;
    if raw.len() < 32 || (raw.len() - 16) % 16 != 0 {
        // At least one block after the IV: PKCS#7 always adds one.
        return Err(DecryptError::Length(raw.len()));
    }
    let (iv, ct) = raw.split_at(16);
    let key = aes_key(encrypt_key);
    let mut buf = ct.to_vec();
    let dec =
        Aes256CbcDec::new_from_slices(&key, iv).map_err(|_| DecryptError::Length(raw.len()))?;
    let plain = dec
        .decrypt_padded::<Pkcs7>(&mut buf)
        .map_err(|_| DecryptError::Padding)?;
    String::from_utf8(plain.to_vec()).map_err(|_| DecryptError::Utf8)
}

#[cfg(test)]
/// The inverse of `decrypt` with a caller-chosen IV: `b64(iv ‖ AES-256-CBC(PKCS#7(plain)))`.
/// perch never encrypts on the wire; this exists for fixtures and round-trip tests.
pub fn encrypt(encrypt_key: &str, plaintext: &[u8], iv: [u8; 16]) -> String {
    let key = aes_key(encrypt_key);
    let mut buf = vec![0u8; plaintext.len() + 16];
    buf[..plaintext.len()].copy_from_slice(plaintext);
    let enc = Aes256CbcEnc::new(&key.into(), &iv.into());
    let ct_len = enc
        .encrypt_padded::<Pkcs7>(&mut buf, plaintext.len())
        .map(<[u8]>::len)
        .unwrap_or(0); // the buffer always has room for one block of padding
    let mut out = iv.to_vec();
    out.extend_from_slice(&buf[..ct_len]);
    B64.encode(out)
}

/// Event / new-callback signature: `lowercase_hex(SHA-256(ts ‖ nonce ‖ encrypt_key ‖
/// raw_body))` over the exact received bytes. Plain SHA-256, not HMAC (refs §1.5).
pub fn event_signature(timestamp: &str, nonce: &str, encrypt_key: &str, raw_body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(raw_body);
    hex::encode(h.finalize())
}

/// Legacy card request URL signature: `lowercase_hex(SHA-1(ts ‖ nonce ‖
/// verification_token ‖ raw_body))` (refs §1.5).
pub fn card_signature(
    timestamp: &str,
    nonce: &str,
    verification_token: &str,
    raw_body: &[u8],
) -> String {
    let mut h = Sha1::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(verification_token.as_bytes());
    h.update(raw_body);
    hex::encode(h.finalize())
}

/// Custom group bot: `b64(HMAC-SHA256(key = ts + "\n" + secret, msg = ""))`, ts in Unix
/// seconds (refs §3). Note the secret is part of the *key*, and the message is empty.
pub fn custom_bot_sign(timestamp_secs: i64, secret: &str) -> String {
    let string_to_sign = format!("{timestamp_secs}\n{secret}");
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(string_to_sign.as_bytes())
        .expect("HMAC takes keys of any length");
    B64.encode(mac.finalize().into_bytes())
}

/// Constant-time equality for signatures and tokens. (Lengths are not secret.)
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A short, stable idempotency key for Feishu's `uuid` fields: the first 32 hex digits
/// of SHA-256(outbox key). The refs give no length limit for `uuid` \[unverified\]; 32
/// hex characters fit every limit seen in the docs (≤ 50) and contain no `/`.
pub fn idempotency_uuid(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_a_node_sdk_challenge_decrypts() {
        assert_eq!(
            hex::encode(aes_key("mazhe.nerd")),
            "7200ed16996143c377d71d4bf6e88f188fcc926e9f87ce25f10f2aa61f8d7c73"
        );
        let ct = "tT1xP+ovuc0T3b/rnZX3ax76exqAn0ANQ6/U45GcciC0mgNBc8JtvqOJGNAPMKpgRs2dVU1NYk9VDeqS8T4SYtU0hzNU54aS84WnxvZ3VFfDcy/RyABlNqlUiGyLDzFI0yxdCMT4KR/YEQXlt6nZi50KwRlZ+A75r645KesZuLMljezYyY8VeeXEVjPw35+e";
        let plain = decrypt("mazhe.nerd", ct).unwrap();
        assert_eq!(
            plain,
            r#"{"challenge":"5634b122-c042-4634-bc7f-b07a3c3e77ad","token":"iRdCP2WwXNBXRM3mGLqhrgch3cn0gbT6","type":"url_verification"}"#
        );
    }

    #[test]
    fn vector_b_go_sdk_event_decrypts_with_full_padding_block() {
        let ct = "bZ3L7yh6m3Fkuffl4g+3uGjIHnhOm5fVZbKVuyT8t7tcd5ABMYm8l28/X900ZL3knZ7n+sCREu/H2WnIzft0amC7+xWqNH8o25IU63N4BnZWfHh+4hyG76QPd19vkw2bPJCx9aqxK8Nz+xqFNbk0RdgyWhmgd30jSxHtcQXAllkI7FMpGpOCteJad3bLXPDBQIV/xkCtKICCS7Z63gakpxZCLaRZ3qCXP1fapHh+LBIupxenrU6ysc7I3nHmjmKie41IiWwS5puG4zQHhVbq6KWLcgWm/3NBZOPQy53ucMu75SXA55I7jarVLZXWUcqBGrcgE3vouWbtwgZuzmoTQl0GSh5VYSVvpW992BuGxUWj0XjPYdICJm6Cr7xouNXwMcdb7N8caVdkdSZeEnswG19qSyDoQhklwzNGW0yiaayulBqJNjfge/G5V3401c2XaIuAeEIo+QQ4RSNpRGfnHkbu/j55FGQAGWjpuBNaIwZbaUoVP3NkGP+vM5rpEDe3sL2GN+Xsd+g9yBs7FqdMV8mXTGgLjCqjrPrke5/km76Q3Pe6KPs2YexMRG4MkSx3xUTzZnNn7zIzShPcjeSwBd2pxk6ht5N+fzueZdxl6Oo=";
        let plain = decrypt("1212121212", ct).unwrap();
        assert_eq!(
            plain,
            r#"{"schema":"2.0","header":{"event_id":"f7984f25108f8137722bb63cee927e66","event_type":"contact.user.created_v3","app_id":"cli_xxxxxxxx","tenant_key":"xxxxxxx","create_time":"1603977298000000","token":"v"},"event":{"object":{"open_id":"ou_7dab8a3d3cdcc9da365777c7ad535d62","union_id":"on_576833b917gda3d939b9a3c2d53e72c8","user_id":"e33ggbyz","name":"张三","employee_no":"employee_no"}},"challenge":"1212","type":"url_verification"}"#
        );
    }

    #[test]
    fn vector_d_event_signature() {
        assert_eq!(
            event_signature("1700000000", "abc123", "test-key", br#"{"schema":"2.0"}"#),
            "d8d50064df00369e7d369d53178666f18cb6ba2d7c9dfa317fda8ac4f270727b"
        );
    }

    #[test]
    fn vector_e_legacy_card_signature() {
        assert_eq!(
            card_signature(
                "1700000000",
                "abc123",
                "test-token",
                br#"{"open_id":"ou_x"}"#
            ),
            "20b60c1b7eda216db23d525a409ae4933bfd20d4"
        );
    }

    #[test]
    fn vector_f_custom_bot_sign() {
        assert_eq!(
            custom_bot_sign(1599360473, "demo-secret"),
            "3/MaVZ8JLIy4TUG+7KSFJqvUkTKd+HWY8g+56DZWq8s="
        );
    }

    #[test]
    fn round_trip_and_every_bad_input() {
        let ct = encrypt("k", br#"{"a":1}"#, [7; 16]);
        assert_eq!(decrypt("k", &ct).unwrap(), r#"{"a":1}"#);
        assert_eq!(decrypt("k", "not base64!"), Err(DecryptError::Base64));
        assert_eq!(
            decrypt("k", &B64.encode([0u8; 20])),
            Err(DecryptError::Length(20))
        );
        assert_eq!(
            decrypt("k", &B64.encode([0u8; 16])),
            Err(DecryptError::Length(16))
        );
        // A wrong key almost always breaks the padding; if by chance it does not, the
        // plaintext is garbage and the caller's JSON parse fails instead.
        assert!(
            decrypt("other", &ct)
                .is_err_and(|e| matches!(e, DecryptError::Padding | DecryptError::Utf8))
                || decrypt("other", &ct).is_ok_and(|p| p != r#"{"a":1}"#)
        );
        // Truncating the ciphertext by one block still decrypts to a wrong length or fails.
        let mut raw = B64.decode(&ct).unwrap();
        raw.truncate(raw.len() - 1);
        assert_eq!(
            decrypt("k", &B64.encode(&raw)),
            Err(DecryptError::Length(raw.len()))
        );
    }

    #[test]
    fn constant_time_compare_and_uuid() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        let u = idempotency_uuid("0190f0f0-aaaa-7bbb-8ccc-1234567890ab/echo/0000");
        assert_eq!(u.len(), 32);
        assert_eq!(
            u,
            idempotency_uuid("0190f0f0-aaaa-7bbb-8ccc-1234567890ab/echo/0000")
        );
        assert_ne!(
            u,
            idempotency_uuid("0190f0f0-aaaa-7bbb-8ccc-1234567890ab/echo/0001")
        );
    }
}
