//! Hostile input a careless or malicious caller may hand the suite, shared by the tests that
//! attack it.

/// Partition keys that are valid for Kinesis (1 to 256 Unicode characters) and hard for anything
/// that writes them into JSON or text by hand: JSON's specials, every control character,
/// non-ASCII text, separators JavaScript treats as line ends, markup, a JSON fragment, DEL, and
/// the longest key.
pub fn partition_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain",
        "quote\"in",
        "back\\slash",
        "\\\"",
        "new\nline\r\t",
        "é ü 日本 🦀",
        "\u{2028}\u{2029}",
        "</script>",
        "{\"Data\":\"x\"}",
        "\u{7f}",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    keys.push((1u8..0x20).map(char::from).collect());
    keys.push("k".repeat(256));
    keys
}
