#!/usr/bin/env python3
"""The links of HTML pages, found independently of the crawler: html5lib
parses each page (a tokenizer and tree builder written to the HTML standard,
so character references are decoded as a browser decodes them) and
urllib.parse resolves each link against the page's base.

Then the crawler's documented rules are applied, so that what remains to
compare is the decoding and the parsing:
  * an href is cleaned as the URL standard says (C0 controls and spaces cut
    from both ends, tabs and newlines removed), which urllib does only in part;
  * a reference that starts with `?` replaces the base's query, even with an
    empty one (urljoin keeps the base's query then);
  * characters a URL may not hold are percent-encoded, and `.` and `..`
    path segments removed, as the URL standard does (urllib keeps both as
    written in an absolute URL);
  * scheme and host are lowercased, default ports and fragments dropped, an
    empty query dropped;
  * only http and https links with a host are kept, each once, in document
    order.

Reads a JSON list of {"url": ..., "html": ...} on standard input and writes
a JSON list of link lists, one per page.
"""

import json
import sys
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import html5lib

# The URL standard's percent-encode sets, for the characters the test pages use.
PATH_SAFE = "!$%&'()*+,-./0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_abcdefghijklmnopqrstuvwxyz|~"
QUERY_SAFE = PATH_SAFE.replace("'", "") + "/?`{}"


def clean(href):
    href = href.strip("".join(chr(c) for c in range(0x21)))
    return "".join(c for c in href if c not in "\t\n\r")


def remove_dot_segments(path):
    """RFC 3986 section 5.2.4, which the URL standard's path parser agrees with."""
    output = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/".join(output) if output != [""] else "/"


def normalize(url):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    default = {"http": 80, "https": 443}[scheme]
    try:
        port = parts.port
    except ValueError:
        # A port that is not a number: the URL standard's parser fails, so
        # there is no link.
        return None
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = quote(parts.path or "/", safe=PATH_SAFE)
    query = quote(parts.query, safe=QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def resolve(base, href):
    """urljoin, except that a reference that starts with `?` replaces the
    base's query even when it is empty, as RFC 3986 and the URL standard
    say (urljoin keeps the base's query then), and that the result's path
    has no `.` or `..` segments left, as a parsed URL never has."""
    if href.startswith("?"):
        parts = urlsplit(base)
        joined = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + href
    else:
        joined = urljoin(base, href)
    parts = urlsplit(joined)
    return urlunsplit(parts._replace(path=remove_dot_segments(parts.path)))


def links(page_url, html):
    document = html5lib.parse(html, namespaceHTMLElements=False)
    base = page_url
    for element in document.iter("base"):
        if "href" in element.attrib:
            base = resolve(page_url, clean(element.attrib["href"]))
            break
    found, seen = [], set()
    for element in document.iter():
        if element.tag not in ("a", "area") or "href" not in element.attrib:
            continue
        url = normalize(resolve(base, clean(element.attrib["href"])))
        if url is not None and url not in seen:
            seen.add(url)
            found.append(url)
    return found


def main():
    pages = json.load(sys.stdin)
    json.dump([links(page["url"], page["html"]) for page in pages], sys.stdout)


if __name__ == "__main__":
    main()
