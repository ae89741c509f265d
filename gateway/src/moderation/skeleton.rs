//! The matching skeleton of a text: what is left of it once the usual
//! evasions are undone, with a map back to the original for masking.
//!
//! Each character of the original is turned into zero or more skeleton
//! characters, on its own (so every skeleton character knows which original
//! character it came from):
//!
//! 1. compatibility decomposition (NFKD: fullwidth `Ｂ` → `B`, ligature
//!    `ﬁ` → `fi`, circled `ⓑ` → `b`, Hangul syllable `발` → jamo
//!    `ᄇ ᅡ ᄅ`, compatibility jamo `ㅂ` → `ᄇ`);
//! 2. combining marks dropped (`bäd` → `bad`, accents stacked on letters);
//! 3. Hangul jamo made position-free: a final consonant becomes the initial
//!    one (`ᆯ` → `ᄅ`), double and cluster consonants and compound vowels
//!    are split (`ᄊ` → `ᄉᄉ`, `ᆰ` → `ᄅᄀ`, `ᅪ` → `ᅩᅡ`), fillers dropped; so
//!    `씨발`, `ㅆㅣㅂㅏㄹ` and `ㅅㅅㅣㅂㅏㄹ` have one skeleton (composed and
//!    written-apart jamo match either way);
//! 4. lower case (`ẞ`/`ß` → `ss`, final `ς` → `σ`);
//! 5. only letters and digits kept: spaces, punctuation, symbols, zero-width
//!    and other format characters vanish (`b.a d` and `b\u{200b}ad` → `bad`).
//!
//! NFKD rather than NFKC: recomposition would only have to be undone again
//! for Hangul, and dropping marks after decomposition is what makes the
//! skeleton compose-insensitive. Step 5 removes word boundaries too, the
//! price of catching letters with spaces between them (`docs/operations.md`,
//! Moderation, says what that means for short entries).

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// A skeleton and, when asked for, where each of its bytes came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skeleton {
    /// The skeleton text.
    pub text: String,
    /// For each byte of `text`: the byte offset in the original of the
    /// character it came from (empty unless built [`Skeleton::mapped`]).
    origin: Vec<u32>,
}

impl Skeleton {
    /// The skeleton of `s`, without the map back.
    pub fn of(s: &str) -> Skeleton {
        let mut text = String::with_capacity(s.len());
        for c in s.chars() {
            push_char(c, &mut |k| text.push(k));
        }
        Skeleton { text, origin: Vec::new() }
    }

    /// The skeleton of `s` with the map back to it (for masking).
    pub fn mapped(s: &str) -> Skeleton {
        let mut text = String::with_capacity(s.len());
        let mut origin = Vec::with_capacity(s.len());
        for (i, c) in s.char_indices() {
            push_char(c, &mut |k| {
                text.push(k);
                origin.resize(text.len(), i as u32);
            });
        }
        Skeleton { text, origin }
    }

    /// The original byte range covered by skeleton bytes `start..end` (a
    /// match): from the character the first came from to the end of the
    /// character the last came from. Only on a [`Skeleton::mapped`] one.
    pub fn original_range(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let from = self.origin[start] as usize;
        let last = self.origin[end - 1] as usize;
        let to = last + original[last..].chars().next().map_or(0, char::len_utf8);
        (from, to)
    }
}

/// True when `c` contributes nothing to a skeleton and shows nothing on its
/// own: a combining mark, a format character (zero-width, bidi, soft
/// hyphen), a variation selector, a Hangul filler. Such characters inside
/// or right after a masked word are dropped rather than kept.
pub fn is_invisible(c: char) -> bool {
    is_combining_mark(c)
        || is_filler(c)
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// True when `c` adds at least one character to a skeleton.
pub fn contributes(c: char) -> bool {
    let mut any = false;
    push_char(c, &mut |_| any = true);
    any
}

/// Hangul fillers: letters by category, blanks to the eye.
fn is_filler(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

/// Pushes the skeleton characters of one original character.
fn push_char(c: char, out: &mut impl FnMut(char)) {
    if c.is_ascii() {
        if c.is_ascii_alphanumeric() {
            out(c.to_ascii_lowercase());
        }
        return;
    }
    if let Some((l, v, t)) = syllable(c) {
        // The common Korean case, without table lookups: jamo have no case
        // and are letters.
        jamo(l, out);
        jamo(v, out);
        if let Some(t) = t {
            jamo(t, out);
        }
        return;
    }
    decompose_compatible(c, |d| {
        if is_combining_mark(d) || is_filler(d) {
            return;
        }
        if ('\u{1100}'..='\u{11FF}').contains(&d) {
            jamo(d, out);
        } else {
            fold_case(d, out);
        }
    });
}

/// The jamo of a precomposed Hangul syllable (Unicode §3.12, the same
/// arithmetic NFKD uses): initial, vowel and the final if any.
fn syllable(c: char) -> Option<(char, char, Option<char>)> {
    let s = u32::from(c).checked_sub(0xAC00).filter(|s| *s < 11_172)?;
    let jamo = |base: u32, i: u32| char::from_u32(base + i).expect("jamo are valid chars");
    let t = s % 28;
    Some((jamo(0x1100, s / 588), jamo(0x1161, (s % 588) / 28), (t > 0).then(|| jamo(0x11A7, t))))
}

/// Lower case, keeping letters and digits only.
fn fold_case(c: char, out: &mut impl FnMut(char)) {
    for l in c.to_lowercase() {
        match l {
            'ß' => {
                out('s');
                out('s');
            }
            'ς' => out('σ'),
            l if l.is_alphanumeric() => out(l),
            _ => {}
        }
    }
}

/// Position-free jamo: finals as initials, double and cluster consonants
/// and compound vowels split into their simple parts. Anything else passes.
fn jamo(c: char, out: &mut impl FnMut(char)) {
    const G: char = '\u{1100}'; // ᄀ
    const N: char = '\u{1102}'; // ᄂ
    const D: char = '\u{1103}'; // ᄃ
    const R: char = '\u{1105}'; // ᄅ
    const M: char = '\u{1106}'; // ᄆ
    const B: char = '\u{1107}'; // ᄇ
    const S: char = '\u{1109}'; // ᄉ
    const NG: char = '\u{110B}'; // ᄋ
    const J: char = '\u{110C}'; // ᄌ
    const CH: char = '\u{110E}'; // ᄎ
    const K: char = '\u{110F}'; // ᄏ
    const T: char = '\u{1110}'; // ᄐ
    const P: char = '\u{1111}'; // ᄑ
    const H: char = '\u{1112}'; // ᄒ
    const O: char = '\u{1169}'; // ᅩ
    const U: char = '\u{116E}'; // ᅮ
    const EU: char = '\u{1173}'; // ᅳ
    const I: char = '\u{1175}'; // ᅵ
    let parts: &[char] = match c {
        // Double initials.
        '\u{1101}' => &[G, G],
        '\u{1104}' => &[D, D],
        '\u{1108}' => &[B, B],
        '\u{110A}' => &[S, S],
        '\u{110D}' => &[J, J],
        // Compound vowels.
        '\u{116A}' => &[O, '\u{1161}'],
        '\u{116B}' => &[O, '\u{1162}'],
        '\u{116C}' => &[O, I],
        '\u{116F}' => &[U, '\u{1165}'],
        '\u{1170}' => &[U, '\u{1166}'],
        '\u{1171}' => &[U, I],
        '\u{1174}' => &[EU, I],
        // Finals (U+11A8..=U+11C2) as initials.
        '\u{11A8}' => &[G],
        '\u{11A9}' => &[G, G],
        '\u{11AA}' => &[G, S],
        '\u{11AB}' => &[N],
        '\u{11AC}' => &[N, J],
        '\u{11AD}' => &[N, H],
        '\u{11AE}' => &[D],
        '\u{11AF}' => &[R],
        '\u{11B0}' => &[R, G],
        '\u{11B1}' => &[R, M],
        '\u{11B2}' => &[R, B],
        '\u{11B3}' => &[R, S],
        '\u{11B4}' => &[R, T],
        '\u{11B5}' => &[R, P],
        '\u{11B6}' => &[R, H],
        '\u{11B7}' => &[M],
        '\u{11B8}' => &[B],
        '\u{11B9}' => &[B, S],
        '\u{11BA}' => &[S],
        '\u{11BB}' => &[S, S],
        '\u{11BC}' => &[NG],
        '\u{11BD}' => &[J],
        '\u{11BE}' => &[CH],
        '\u{11BF}' => &[K],
        '\u{11C0}' => &[T],
        '\u{11C1}' => &[P],
        '\u{11C2}' => &[H],
        c => {
            out(c);
            return;
        }
    };
    parts.iter().copied().for_each(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sk(s: &str) -> String {
        Skeleton::of(s).text
    }

    #[test]
    fn latin_evasions_share_one_skeleton() {
        let want = sk("badword");
        assert_eq!(want, "badword");
        for evasion in [
            "BadWord",
            "ＢＡＤＷＯＲＤ",           // fullwidth (NFKC/NFKD)
            "b\u{200B}a\u{200D}dword",  // zero-width space and joiner
            "b a d w o r d",            // spaces between letters
            "b.a-d_w*o!r?d",            // punctuation between letters
            "bäd́wörd",                  // combining marks (precomposed and stacked)
            "ⓑⓐⓓⓦⓞⓡⓓ",                  // circled letters
            "𝐛𝐚𝐝𝐰𝐨𝐫𝐝",                  // mathematical bold
            "b\u{FE0F}adword\u{E0041}", // variation selector, tag character
        ] {
            assert_eq!(sk(evasion), want, "{evasion:?}");
        }
        assert_eq!(sk("Straße"), sk("STRASSE"));
        assert_eq!(sk("ﬁne"), "fine");
        assert_eq!(sk("ΣΟΦΟΣ"), sk("σοφος"));
    }

    #[test]
    fn hangul_is_compose_insensitive() {
        let composed = sk("씨발");
        for apart in ["ㅆㅣㅂㅏㄹ", "ㅅㅅㅣㅂㅏㄹ", "씨 발", "씨.발", "씨\u{200B}발", "ㅆ ㅣ ㅂ ㅏ ㄹ"]
        {
            assert_eq!(sk(apart), composed, "{apart:?}");
        }
        // A final consonant written apart, a cluster final, compound vowels,
        // halfwidth jamo and fillers.
        assert_eq!(sk("닭"), sk("ㄷㅏㄹㄱ"));
        assert_eq!(sk("닭"), sk("ㄷㅏㄺ"));
        assert_eq!(sk("와"), sk("ㅇㅗㅏ"));
        assert_eq!(sk("\u{FFA1}\u{FFC2}\u{FFA1}"), sk("ㄱㅏㄱ"));
        assert_eq!(sk("각"), sk("ㄱㅏ\u{3164}ㄱ"));
        assert_ne!(sk("가"), sk("각"));
    }

    #[test]
    fn the_syllable_shortcut_agrees_with_nfkd() {
        for c in ('\u{AC00}'..='\u{D7A3}').step_by(7) {
            let mut fast = String::new();
            push_char(c, &mut |k| fast.push(k));
            let mut slow = String::new();
            decompose_compatible(c, |d| jamo(d, &mut |j| slow.push(j)));
            assert_eq!(fast, slow, "{c}");
        }
    }

    #[test]
    fn the_map_leads_back_to_the_original_characters() {
        let original = "x Ｂ.a\u{200B}d! 발";
        let s = Skeleton::mapped(original);
        assert_eq!(s.text, sk(original));
        let at = s.text.find("bad").unwrap();
        let (from, to) = s.original_range(original, at, at + 3);
        assert_eq!(&original[from..to], "Ｂ.a\u{200B}d");
        // Three jamo of one syllable lead back to the whole syllable.
        let at = s.text.find(&sk("발")).unwrap();
        let (from, to) = s.original_range(original, at, s.text.len());
        assert_eq!(&original[from..to], "발");
    }

    #[test]
    fn invisible_characters_are_told_apart_from_separators() {
        for c in ['\u{200B}', '\u{0301}', '\u{FEFF}', '\u{3164}', '\u{00AD}'] {
            assert!(is_invisible(c) && !contributes(c), "{c:?}");
        }
        for c in [' ', '.', '!'] {
            assert!(!is_invisible(c) && !contributes(c), "{c:?}");
        }
        assert!(contributes('Ｂ') && contributes('발'));
    }
}
