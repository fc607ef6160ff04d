// The embedder's BERT WordPiece tokenizer, in the browser, read from its own tokenizer.json.
//
// It reproduces what the Python `tokenizers` library does with that file (BertNormalizer with
// lowercasing and accent stripping, BertPreTokenizer, WordPiece with "##" continuations,
// [CLS] ... [SEP]) so the browser's token ids are the server's. A tokenizer library would be
// 100 times larger than these lines for the one model we ship.
//
//   const tok = WordPiece.fromJSON(await (await fetch("tokenizer.json")).json());
//   tok.encode("How do I add my own files?", 256)  // -> [101, 2129, ..., 102]

// CJK ideograph blocks that BERT surrounds with spaces (tokenizers' is_chinese_char).
const CJK = [
  [0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f],
  [0x2b740, 0x2b81f], [0x2b820, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f],
];
const CONTROL = /\p{C}/u; // tokenizers' is_control: the "Other" categories (Cc, Cf, Cn, Co, Cs)
const WHITESPACE = /\s/u;
const ACCENT = /\p{Mn}/u;
// tokenizers' is_punctuation: ASCII punctuation (which includes symbols such as $ + < = > ^ ` | ~)
// or any Unicode punctuation category.
const PUNCTUATION = /[!-\/:-@\[-`{-~]|\p{P}/u;

function isChinese(code) {
  return CJK.some(([lo, hi]) => code >= lo && code <= hi);
}

export class WordPiece {
  /** A tokenizer over `vocab` (token -> id), with the model's special tokens and limits. */
  constructor(vocab, { unk = "[UNK]", cls = "[CLS]", sep = "[SEP]", prefix = "##", maxWordChars = 100 } = {}) {
    this.vocab = new Map(Object.entries(vocab));
    this.unk = this.vocab.get(unk);
    this.cls = this.vocab.get(cls);
    this.sep = this.vocab.get(sep);
    this.prefix = prefix;
    this.maxWordChars = maxWordChars;
  }

  /** The tokenizer described by a Hugging Face tokenizer.json (a WordPiece model). */
  static fromJSON(json) {
    const model = json.model;
    if (!model || model.type !== "WordPiece") throw new Error("tokenizer.json is not a WordPiece model");
    return new WordPiece(model.vocab, {
      unk: model.unk_token,
      prefix: model.continuing_subword_prefix,
      maxWordChars: model.max_input_chars_per_word,
    });
  }

  /** BertNormalizer: drop control characters, space out CJK, lowercase, strip accents. */
  normalize(text) {
    let out = "";
    for (const ch of text) {
      const code = ch.codePointAt(0);
      // Tab, newline and return are whitespace; every other control character is dropped first.
      const layout = ch === "\t" || ch === "\n" || ch === "\r";
      if (!layout && (code === 0 || code === 0xfffd || CONTROL.test(ch))) continue;
      if (layout || WHITESPACE.test(ch)) out += " ";
      else if (isChinese(code)) out += ` ${ch} `;
      else out += ch;
    }
    // strip_accents follows lowercase when unset, as in tokenizers: NFD, drop marks, lowercase.
    return [...out.normalize("NFD")].filter((ch) => !ACCENT.test(ch)).join("").toLowerCase();
  }

  /** BertPreTokenizer: split on whitespace, and every punctuation character is a word. */
  words(text) {
    const words = [];
    let word = "";
    for (const ch of text) {
      if (WHITESPACE.test(ch)) {
        if (word) words.push(word);
        word = "";
      } else if (PUNCTUATION.test(ch)) {
        if (word) words.push(word);
        words.push(ch);
        word = "";
      } else {
        word += ch;
      }
    }
    if (word) words.push(word);
    return words;
  }

  /** Greedy longest-match-first WordPiece ids of one word; [UNK] when any piece is unknown. */
  pieces(word) {
    const chars = [...word];
    if (chars.length > this.maxWordChars) return [this.unk];
    const ids = [];
    for (let start = 0; start < chars.length; ) {
      let end = chars.length;
      let id;
      while (start < end) {
        const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        id = this.vocab.get(piece);
        if (id !== undefined) break;
        end -= 1;
      }
      if (id === undefined) return [this.unk];
      ids.push(id);
      start = end;
    }
    return ids;
  }

  /** Token ids with [CLS]/[SEP], truncated to `maxTokens` in all (as the server truncates). */
  encode(text, maxTokens = 256) {
    const ids = [];
    for (const word of this.words(this.normalize(text))) ids.push(...this.pieces(word));
    return [this.cls, ...ids.slice(0, maxTokens - 2), this.sep];
  }
}
