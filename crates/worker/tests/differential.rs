//! Our link extractor against an independent reference, on thousands of
//! tricky pages generated from a seed: character references in every form,
//! white space in and around hrefs, `<base href>` variants, tag and
//! attribute case, unquoted attributes, malformed nesting, comments, CDATA,
//! script, style, textarea and template. The reference is html5lib (a
//! parser written to the HTML standard) with urllib's urljoin, plus our
//! documented rules, in `scripts/reference_links.py`. Every page must give
//! the same links in the same order.
//!
//! The Python interpreter comes from `CRAWLER_TEST_PYTHON`, else
//! `target/py/bin/python`, which `scripts/test` makes with html5lib in it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use url::Url;
use worker::extract::LinkExtractor;

const PAGES: usize = 3000;
const SEED: u64 = 0x5eed_1e55_c0ff_ee00;

/// xorshift64*: a fixed seed gives the same pages on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Names of references for characters that URLs use.
fn named(c: char) -> Option<&'static str> {
    Some(match c {
        '.' => "period",
        '_' => "lowbar",
        '/' => "sol",
        '?' => "quest",
        '=' => "equals",
        '#' => "num",
        '&' => "amp",
        ':' => "colon",
        '!' => "excl",
        '@' => "commat",
        '$' => "dollar",
        '(' => "lpar",
        ')' => "rpar",
        '*' => "ast",
        '+' => "plus",
        ',' => "comma",
        ';' => "semi",
        'é' => "eacute",
        '\'' => "apos",
        _ => return None,
    })
}

/// One character of an href as a page may write it: itself, or one of its
/// character references (decimal, hex, padded, named, and numeric without
/// its semicolon). A reference without a semicolon takes any digits that
/// follow into its number, so it is written only where none follows (the
/// traps below hold the cases where that makes another ASCII character).
fn write_char(rng: &mut Rng, c: char, next: Option<char>, quote: char) -> String {
    let plain = match c {
        '&' => "&amp;".to_string(),
        c if c == quote => format!("&#{};", c as u32),
        c => c.to_string(),
    };
    if !rng.chance(30) {
        return plain;
    }
    match rng.below(7) {
        0 => format!("&#{};", c as u32),
        1 => format!("&#x{:x};", c as u32),
        2 => format!("&#X{:04X};", c as u32),
        3 => format!("&#{:06}", c as u32) + ";",
        // No semicolon: still decoded (the standard calls it a parse error).
        4 | 5 if next.is_some_and(|n| n.is_ascii_hexdigit()) => format!("&#{};", c as u32),
        4 => format!("&#{}", c as u32),
        5 => format!("&#x{:X}", c as u32),
        _ => named(c).map_or(plain, |name| format!("&{name};")),
    }
}

/// Bare ampersands that are, or are not, references by the attribute rule.
const AMPERSAND_TRAPS: &[&str] = &[
    "&copy=1",
    "&copyx",
    "&copy/",
    "&amp",
    "&ampx",
    "&notin",
    "&lt5",
    "&b=2",
    "&#;",
    "&#x;",
    "&#zz",
    "& ",
    "&eacute",
    "&eacutex",
    "&#128;",
    "&#130;",
    "&#x8e;",
    "&#150;",
    "&#x9F;",
    "&#x81;",
    "&#159",
    "&#45x",  // `-x`
    "&#x2Dz", // `-z`
    "&#x2D9", // the 9 is part of the number
    "&#0;",
    "&#xD800;",
    "&#1114112;",
];

fn url_text(rng: &mut Rng) -> String {
    let segments = [
        "a", "b-c", "d.html", "..", ".", "e_f", "x~y", "Page", "z(1)", "q,r", "é", "sp ace", "a+b",
        "colon:x", "@at",
    ];
    let mut path: Vec<&str> = (0..1 + rng.below(4)).map(|_| rng.pick(&segments)).collect();
    if rng.chance(20) {
        path.push("");
    }
    let relative = path.join("/");
    let mut url = match rng.below(10) {
        0 => format!("/{relative}"),
        1 => format!("//other.test/{relative}"),
        2 => format!("http://site.test/{relative}"),
        3 => format!("HTTP://Site.TEST:80/{relative}"),
        4 => format!("https://site.test:443/{relative}"),
        5 => format!("http://other.test:8080/{relative}"),
        6 => rng
            .pick(&[
                "mailto:x@y.test",
                "javascript:void(0)",
                "ftp://f.test/",
                "data:text/html,x",
            ])
            .to_string(),
        7 => String::new(),
        _ => relative,
    };
    if rng.chance(30) {
        url.push('?');
        url.push_str(rng.pick(&["a=1&b=2", "q", "x=y;z", "k='v'", "", "s=a b"]));
    }
    if rng.chance(15) {
        url.push('#');
        url.push_str(rng.pick(&["frag", "", "a/b"]));
    }
    url
}

/// An href value as written in markup, and the quote around it.
fn href_value(rng: &mut Rng) -> (String, char) {
    let quote = match rng.below(5) {
        0 => '\'',
        1 => ' ', // unquoted, when the value allows it
        _ => '"',
    };
    let mut written = String::new();
    let text: Vec<char> = url_text(rng).chars().collect();
    for (i, &c) in text.iter().enumerate() {
        let next = text.get(i + 1).copied();
        written.push_str(&write_char(
            rng,
            c,
            next,
            if quote == ' ' { '"' } else { quote },
        ));
        if rng.chance(3) {
            written.push_str(rng.pick(&["\t", "\n", "&#9;", "&#10;", "&#13;"]));
        }
    }
    if rng.chance(15) {
        written.push_str(rng.pick(AMPERSAND_TRAPS));
    }
    let padding = [
        " ", "\t", "\n", "\r\n", "\x0c", "&#32;", "&#9;", "&#10;", "", "\x01", "\x1f", "&#1;",
        "&#31;", "&#x1B;",
    ];
    if rng.chance(25) {
        written = format!("{}{}{}", rng.pick(&padding), written, rng.pick(&padding));
    }
    let unquotable = written.is_empty()
        || written
            .chars()
            .any(|c| c.is_whitespace() || "\"'=<>`".contains(c));
    let quote = if quote == ' ' && unquotable {
        '"'
    } else {
        quote
    };
    (written, quote)
}

fn attribute(name: &str, value: &str, quote: char) -> String {
    match quote {
        ' ' => format!("{name}={value}"),
        q => format!("{name}={q}{value}{q}"),
    }
}

fn link(rng: &mut Rng) -> String {
    let (value, quote) = href_value(rng);
    let name = rng.pick(&["href", "HREF", "Href"]);
    let href = attribute(name, &value, quote);
    let extra = rng.pick(&[
        "",
        " class=\"x\"",
        " title='a > b'",
        " rel=nofollow",
        " href=\"/second\"",
    ]);
    match rng.below(6) {
        0 => format!("<AREA {href}{extra}>"),
        1 => format!("<area {href}{extra} />"),
        2 => format!("<A {href}{extra}>Link</A>"),
        _ => format!("<a{extra} {href}>link <b>text</b></a>"),
    }
}

fn base(rng: &mut Rng) -> String {
    let (value, quote) = href_value(rng);
    let base = format!(
        "<{} {}>",
        rng.pick(&["base", "BASE"]),
        attribute("href", &value, quote)
    );
    match rng.below(4) {
        0 => format!("<base target=\"_blank\">{base}"),
        1 => format!("{base}<base href=\"/ignored/\">"),
        _ => base,
    }
}

const NOISE: &[&str] = &[
    "<!-- <a href=\"/fake-comment\">x</a> -->",
    "<!--> <p>abruptly closed comment</p>",
    "<!---> <p>also abrupt</p>",
    "<script>document.write('<a href=\"/fake-script\">')</script>",
    "<SCRIPT type=text/template><a href=\"/fake-script-2\"></a></SCRIPT>",
    "<style>a[href=\"/fake-style\"]{color:red}</style>",
    "<![CDATA[ <a href=\"/fake-cdata\"> ]]>",
    "<textarea><a href=\"/fake-textarea\">t</a></textarea>",
    "<title>x <a href=\"/fake-title\">y</a></title>",
    "<template><a href=\"/in-template\">t</a></template>",
    "<b><a href=\"/misnested\"><i>x</b></a></i>",
    "<a href=\"/outer\"><div><a href=\"/inner\">n</a></div></a>",
    "<p><a href=/unclosed-p><p>next",
    "<a name=\"anchor-without-href\">n</a>",
    "<a href>empty attribute</a>",
    "<div><span>text &amp; &lt;tags&gt; &copy</span></div>",
    "<p>a < b and c > d</p>",
    "<img src=\"/image.png\" alt=\"<a href=/fake-alt>\">",
];

fn page(rng: &mut Rng) -> String {
    let mut body: Vec<String> = Vec::new();
    for _ in 0..2 + rng.below(8) {
        if rng.chance(35) {
            body.push(rng.pick(NOISE).to_string());
        } else {
            body.push(link(rng));
        }
    }
    let head_base = if rng.chance(30) {
        base(rng)
    } else {
        String::new()
    };
    if rng.chance(15) {
        let at = rng.below(body.len() + 1);
        body.insert(at, base(rng));
    }
    let doctype = rng.pick(&["<!DOCTYPE html>", "<!doctype HTML>", ""]);
    format!(
        "{doctype}<HTML><head><title>T</title>{head_base}</head><BODY>{}</body></html>",
        body.join("\n")
    )
}

fn page_url(rng: &mut Rng, i: usize) -> String {
    match rng.below(3) {
        0 => format!("http://site.test/dir/sub/page{i}.html"),
        1 => format!("https://site.test:8443/d{i}/"),
        _ => format!("http://site.test/p{i}?x=1"),
    }
}

fn ours(url: &str, html: &str, chunk: usize) -> Vec<String> {
    let mut extractor = LinkExtractor::new();
    for piece in html.as_bytes().chunks(chunk) {
        extractor
            .feed(piece)
            .expect("the parser never fails on text");
    }
    extractor.finish(&Url::parse(url).unwrap()).links
}

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("CRAWLER_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/python");
    assert!(
        venv.exists(),
        "no Python with html5lib: run scripts/test, which makes target/py, or set CRAWLER_TEST_PYTHON"
    );
    venv
}

fn reference(pages: &[Value]) -> Vec<Vec<String>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_links.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the reference");
    let input = serde_json::to_vec(pages).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().expect("the reference finishes");
    assert!(output.status.success(), "the reference failed");
    serde_json::from_slice(&output.stdout).expect("the reference writes JSON")
}

#[test]
fn links_match_an_independent_parser_on_thousands_of_tricky_pages() {
    let mut rng = Rng(SEED);
    let pages: Vec<Value> = (0..PAGES)
        .map(|i| json!({"url": page_url(&mut rng, i), "html": page(&mut rng)}))
        .collect();
    let expected = reference(&pages);
    assert_eq!(expected.len(), PAGES);

    let mut differences = Vec::new();
    let mut links = 0;
    for (i, (page, want)) in pages.iter().zip(&expected).enumerate() {
        let (url, html) = (
            page["url"].as_str().unwrap(),
            page["html"].as_str().unwrap(),
        );
        // Fed whole and in awkward chunks: the chunking must not matter.
        let got = ours(url, html, 1 + i % 17);
        assert_eq!(
            got,
            ours(url, html, 1 << 20),
            "page {i} depends on its chunking"
        );
        links += want.len();
        if &got != want {
            differences.push(format!(
                "page {i} at {url}\n  html: {html}\n  ours:      {got:?}\n  reference: {want:?}"
            ));
        }
    }
    assert!(links > PAGES * 2, "the pages hold links: {links}");
    if let Ok(path) = std::env::var("CRAWLER_DIFFERENTIAL_REPORT") {
        std::fs::write(path, differences.join("\n\n")).expect("write the report");
    }
    assert!(
        differences.is_empty(),
        "{} of {PAGES} pages differ; the first:\n{}",
        differences.len(),
        differences[..differences.len().min(5)].join("\n")
    );
    println!("{PAGES} pages, {links} links: identical to the reference");
}
