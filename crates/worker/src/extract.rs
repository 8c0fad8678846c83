//! Link and title extraction from HTML as it streams in.
//!
//! lol_html parses chunk by chunk without building a DOM, so memory stays
//! flat however large the page. Links are resolved only at the end because
//! `<base href>` applies to the whole document, even links written before it.
//!
//! lol_html hands out attribute values and text as written, character
//! references and all; they are decoded here as the HTML standard's
//! tokenizer decodes them (`htmlize` implements that algorithm): attribute
//! values by the attribute rule, which leaves `&name` alone when `=` or an
//! alphanumeric follows, and text by the text rule.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::borrow::Cow;
use std::sync::LazyLock;

use htmlize::{unescape, unescape_attribute};
use lol_html::AsciiCompatibleEncoding;
use lol_html::html_content::TextChunk;
use lol_html::send::{Element, ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{Selector, element, text};
use url::Url;

/// The selectors every page is read with, parsed once: parsing them again
/// for each page cost more than reading a small page.
static BASE: LazyLock<Selector> = LazyLock::new(|| selector("base[href]"));
static LINKS: LazyLock<Selector> = LazyLock::new(|| selector("a[href], area[href]"));
static TITLE: LazyLock<Selector> = LazyLock::new(|| selector("title"));

fn selector(css: &str) -> Selector {
    css.parse().expect("a valid built-in selector")
}

const MAX_TITLE_CHARS: usize = 512;

#[derive(Default)]
struct Found {
    base: Option<String>,
    hrefs: Vec<String>,
    title: String,
    title_done: bool,
    /// Field name -> text of each matching element, in document order.
    fields: BTreeMap<String, Vec<String>>,
}

/// Longest text kept per extracted field value.
const MAX_FIELD_CHARS: usize = 4096;

/// Feeds HTML chunks to a streaming parser and collects what a crawler needs.
pub struct LinkExtractor {
    rewriter: HtmlRewriter<'static, fn(&[u8])>,
    found: Arc<Mutex<Found>>,
}

/// What a page said about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    pub title: Option<String>,
    /// Normalised absolute links in document order, each once.
    pub links: Vec<String>,
    /// Field name -> text of each element its selector matched.
    pub fields: BTreeMap<String, Vec<String>>,
}

fn discard(_: &[u8]) {}

/// The encoding a `Content-Type`'s `charset` names, when it is one the
/// parser can read (ASCII-compatible).
fn declared_charset(content_type: &str) -> Option<AsciiCompatibleEncoding> {
    let label = content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches(['"', '\'']))
    })?;
    AsciiCompatibleEncoding::new(encoding_rs::Encoding::for_label(label.as_bytes())?)
}

impl LinkExtractor {
    pub fn new() -> Self {
        Self::with_fields(&BTreeMap::new())
    }

    /// An extractor that also collects the text of each element matching a
    /// field's CSS selector. Selectors must be valid (spiders check them).
    pub fn with_fields(fields: &BTreeMap<String, String>) -> Self {
        Self::build(fields, Settings::new_send())
    }

    fn build(fields: &BTreeMap<String, String>, settings: Settings<'static, 'static>) -> Self {
        let found = Arc::new(Mutex::new(Found::default()));
        let (on_base, on_link, on_title) = (found.clone(), found.clone(), found.clone());
        let mut settings = settings
            .append_element_content_handler((
                Cow::Borrowed(&*BASE),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                    let mut f = on_base.lock().expect("extractor state");
                    // Only the first <base href> counts, as in browsers.
                    if f.base.is_none() {
                        f.base = el.get_attribute("href");
                    }
                    Ok(())
                }),
            ))
            .append_element_content_handler((
                Cow::Borrowed(&*LINKS),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                    if let Some(href) = el.get_attribute("href") {
                        on_link.lock().expect("extractor state").hrefs.push(href);
                    }
                    Ok(())
                }),
            ))
            .append_element_content_handler((
                Cow::Borrowed(&*TITLE),
                ElementContentHandlers::default().text(move |t: &mut TextChunk<'_>| {
                    let mut f = on_title.lock().expect("extractor state");
                    if !f.title_done && f.title.len() < MAX_TITLE_CHARS * 4 {
                        f.title.push_str(t.as_str());
                    }
                    if t.last_in_text_node() {
                        f.title_done = true;
                    }
                    Ok(())
                }),
            ));
        for (name, selector) in fields {
            let (on_start, on_text) = (found.clone(), found.clone());
            let (start_name, text_name) = (name.clone(), name.clone());
            // The text node being read: character references are decoded per
            // text node, as a browser does, so a reference cut by a tag
            // (`&am<b>p;</b>`) is not joined back together.
            let mut node = String::new();
            found
                .lock()
                .expect("extractor state")
                .fields
                .insert(name.clone(), Vec::new());
            settings = settings
                .append_element_content_handler(element!(selector, move |_el| {
                    // Each match starts a new value; its text follows.
                    let mut f = on_start.lock().expect("extractor state");
                    f.fields
                        .entry(start_name.clone())
                        .or_default()
                        .push(String::new());
                    Ok(())
                }))
                .append_element_content_handler(text!(selector, move |t| {
                    if node.len() < MAX_FIELD_CHARS * 4 {
                        node.push_str(t.as_str());
                    }
                    if !t.last_in_text_node() {
                        return Ok(());
                    }
                    let text = unescape(&node).into_owned();
                    node.clear();
                    let mut f = on_text.lock().expect("extractor state");
                    if let Some(value) = f.fields.get_mut(&text_name).and_then(|v| v.last_mut())
                        && value.len() < MAX_FIELD_CHARS * 4
                    {
                        value.push_str(&text);
                    }
                    Ok(())
                }));
        }
        Self {
            rewriter: HtmlRewriter::new(settings, discard as fn(&[u8])),
            found,
        }
    }

    /// An extractor for a page served with `content_type`: its `charset`
    /// decodes the page; without one, a `<meta charset>` (or `http-equiv`)
    /// in the page does, and UTF-8 until then. An unknown charset, or one
    /// not ASCII-compatible (UTF-16), leaves UTF-8.
    pub fn for_page(fields: &BTreeMap<String, String>, content_type: Option<&str>) -> Self {
        let settings = match content_type.and_then(declared_charset) {
            Some(encoding) => Settings::new_send().with_encoding(encoding),
            None => Settings::new_send().with_adjust_charset_on_meta_tag(true),
        };
        Self::build(fields, settings)
    }

    /// Parses the next chunk. Malformed HTML is not an error: browsers cope,
    /// and so must a crawler; only a parser failure stops extraction.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), lol_html::errors::RewritingError> {
        self.rewriter.write(chunk)
    }

    /// Finishes parsing and resolves the links against the page's base.
    pub fn finish(self, page_url: &Url) -> Extracted {
        // End-of-input errors only concern output we throw away.
        let _ = self.rewriter.end();
        let found = std::mem::take(&mut *self.found.lock().expect("extractor state"));
        // A base that does not parse leaves the document's own URL in charge.
        let base = found
            .base
            .as_deref()
            .and_then(|b| {
                page_url
                    .join(&crawler_core::urls::clean_href(&unescape_attribute(b)))
                    .ok()
            })
            .unwrap_or_else(|| page_url.clone());
        let mut seen = std::collections::HashSet::new();
        let links = found
            .hrefs
            .iter()
            .filter_map(|href| crawler_core::urls::resolve_link(&base, &unescape_attribute(href)))
            .map(String::from)
            .filter(|u| seen.insert(u.clone()))
            .collect();
        let title = collapse_whitespace(&unescape(&found.title));
        let fields = found
            .fields
            .into_iter()
            .map(|(name, values)| {
                let values = values
                    .iter()
                    .map(|v| {
                        collapse_whitespace(v)
                            .chars()
                            .take(MAX_FIELD_CHARS)
                            .collect::<String>()
                    })
                    .filter(|v| !v.is_empty())
                    .collect();
                (name, values)
            })
            .collect();
        Extracted {
            title: (!title.is_empty()).then(|| title.chars().take(MAX_TITLE_CHARS).collect()),
            links,
            fields,
        }
    }
}

impl Default for LinkExtractor {
    fn default() -> Self {
        Self::new()
    }
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(html: &str, url: &str, chunk: usize) -> Extracted {
        let mut ex = LinkExtractor::new();
        for piece in html.as_bytes().chunks(chunk) {
            ex.feed(piece).unwrap();
        }
        ex.finish(&Url::parse(url).unwrap())
    }

    #[test]
    fn base_href_applies_to_links_before_and_after_it() {
        let html = r#"<html><head><a href="early.html">e</a><base href="/docs/"><title> My
            Page </title></head><body><a href="x.html#top">x</a><a href="http://Other.example/">o</a>
            <a href="mailto:a@b">m</a><a href="x.html">dup</a><area href="/map"></body></html>"#;
        for chunk in [1, 7, 4096] {
            let out = extract(html, "http://site.test/a/b.html", chunk);
            assert_eq!(out.title.as_deref(), Some("My Page"));
            assert_eq!(
                out.links,
                vec![
                    "http://site.test/docs/early.html",
                    "http://site.test/docs/x.html",
                    "http://other.example/",
                    "http://site.test/map",
                ]
            );
        }
    }

    #[test]
    fn fields_collect_the_text_of_each_match_including_nested_text() {
        let fields = BTreeMap::from([
            ("head".to_string(), "h1".to_string()),
            ("price".to_string(), ".price".to_string()),
            ("none".to_string(), "table".to_string()),
        ]);
        let mut ex = LinkExtractor::with_fields(&fields);
        let html = r#"<h1>Hello <b>big</b>
            world</h1><span class="price"> 3 &amp; 4 </span><p class="price">9</p>"#;
        for piece in html.as_bytes().chunks(5) {
            ex.feed(piece).unwrap();
        }
        let out = ex.finish(&Url::parse("http://s.test/").unwrap());
        assert_eq!(out.fields["head"], vec!["Hello big world"]);
        assert_eq!(out.fields["price"], vec!["3 & 4", "9"]);
        assert_eq!(out.fields["none"], Vec::<String>::new());
    }

    #[test]
    fn a_reference_cut_by_a_tag_is_two_texts_as_in_a_browser() {
        let fields = BTreeMap::from([("head".to_string(), "h1".to_string())]);
        let mut ex = LinkExtractor::with_fields(&fields);
        ex.feed(b"<h1>&am<b>p;</b> &amp;</h1>").unwrap();
        let out = ex.finish(&Url::parse("http://s.test/").unwrap());
        assert_eq!(out.fields["head"], vec!["&amp; &"]);
    }

    #[test]
    fn entities_in_hrefs_are_decoded() {
        let out = extract(r#"<a href="/q?a=1&amp;b=2">q</a>"#, "http://s.test/", 3);
        assert_eq!(out.links, vec!["http://s.test/q?a=1&b=2"]);
    }

    /// The page that found this bug: AsciiDoc writes `-` as `&#45;`.
    #[test]
    fn numeric_references_in_hrefs_are_decoded_not_cut_at_the_hash() {
        let html =
            r#"<a href="git-fsmonitor&#45;&#45;daemon.html">d</a><a href="a&#x2D;b.html">h</a>"#;
        let out = extract(html, "http://s.test/docs/", 4);
        assert_eq!(
            out.links,
            vec![
                "http://s.test/docs/git-fsmonitor--daemon.html",
                "http://s.test/docs/a-b.html"
            ]
        );
    }

    #[test]
    fn references_decode_as_the_standard_says_in_attributes_and_in_text() {
        let html = concat!(
            r#"<a href="/x?a=1&copy=2">attribute rule: &copy= stays</a>"#,
            r#"<a href="/y?b&copyc">attribute rule: &copy+alnum stays</a>"#,
            r#"<a href="/z&copy;">with a semicolon it decodes</a>"#,
            r#"<a href="/n&#0;&#128;&#xD800;&#x110000;">replacements</a>"#,
            r#"<title>&copy 2024 &amp; &notit; &#x27;q&#39; &#150;</title>"#,
        );
        let out = extract(html, "http://s.test/", 3);
        assert_eq!(
            out.links,
            vec![
                "http://s.test/x?a=1&copy=2",
                "http://s.test/y?b&copyc",
                "http://s.test/z%C2%A9",
                // U+0000 and surrogates and values past U+10FFFF become
                // U+FFFD; the C1 value 128 is the euro sign of windows-1252.
                "http://s.test/n%EF%BF%BD%E2%82%AC%EF%BF%BD%EF%BF%BD",
            ]
        );
        // In text the legacy `&copy` and `&not` decode without a semicolon.
        assert_eq!(out.title.as_deref(), Some("© 2024 & ¬it; 'q' –"));
    }

    #[test]
    fn whitespace_around_and_inside_hrefs_is_cleaned_as_the_url_standard_says() {
        let html = "<base href=\"\n /docs/\t\"><a href=\" \x0c a\tb\n.html \r\n\">a</a>\
                    <a href=\"c\u{a0}\">nbsp is not whitespace here</a><a href=\" \t \">self</a>";
        let out = extract(html, "http://s.test/", 5);
        assert_eq!(
            out.links,
            vec![
                "http://s.test/docs/ab.html",
                "http://s.test/docs/c%C2%A0",
                "http://s.test/docs/",
            ]
        );
    }

    #[test]
    fn a_page_without_title_or_links_yields_nothing() {
        assert_eq!(
            extract("<p>plain", "http://s.test/", 64),
            Extracted::default()
        );
    }
}
