//! The gateway's web page in a real browser: headless Chromium, driven
//! through chromedriver (WebDriver). A crawl of a loopback site is
//! submitted on the page; the page shows the result as levels, with the
//! counts the site has; a bad URL is refused in words. A screenshot of the
//! finished crawl is kept in `target/test-artifacts/web-page.png`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster_tests::processes::ClusterSpec;
use cluster_tests::site::{SitePlan, TestSite};
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (scripts/tools.sh installs Debian's chromium-driver)");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("make the artifacts folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_submitted_on_the_web_page_shows_its_levels() {
    let cluster = ClusterSpec::new(1, 2)
        .gateway_args(&["--auth", "token"])
        .start()
        .await;
    let token = cluster.new_token("web", "web").await;
    let site = TestSite::serve(SitePlan::tree(&[3, 2])).await;
    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1200,1400",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("start headless Chromium");

    let page = format!("http://{}/", cluster.gateway.addr());
    browser.goto(&page).await.unwrap();
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//div[@id='connection'][starts-with(., 'Connected')]",
        ))
        .await
        .expect("the page connects to the gateway");

    // The token goes in once; the page sends it in an `auth` message.
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    browser
        .find(Locator::Id("signIn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//div[@id='connection'][contains(., 'Signed in for tenant web.')]",
        ))
        .await
        .expect("the gateway takes the page's token");

    // A crawl of the loopback site to depth 2: levels of 1, 3 and 6 pages.
    browser
        .find(Locator::Id("url"))
        .await
        .unwrap()
        .send_keys(&site.url("/"))
        .await
        .unwrap();
    let depth = browser.find(Locator::Id("depth")).await.unwrap();
    depth.clear().await.unwrap();
    depth.send_keys("2").await.unwrap();
    browser
        .find(Locator::Id("crawl"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let done = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".job .state.done"))
        .await
        .expect("the crawl finishes on the page");
    assert_eq!(done.text().await.unwrap(), "done");
    let mut counts = Vec::new();
    for cell in browser
        .find_all(Locator::Css(".job .level-count"))
        .await
        .unwrap()
    {
        counts.push(cell.text().await.unwrap());
    }
    assert_eq!(counts, ["1", "3", "6"]);
    let pages = browser
        .find(Locator::Css(".job .pages-done"))
        .await
        .unwrap();
    assert_eq!(pages.text().await.unwrap(), "10");

    // Open level 1: each URL with its status and title.
    browser
        .find(Locator::XPath("//summary[starts-with(., 'Level 1:')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let first = browser
        .find(Locator::XPath(
            "//details[summary[starts-with(., 'Level 1:')]]//li",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(first, format!("200 {} — /p0", site.url("/p0")));
    let screenshot = browser.screenshot().await.unwrap();
    let saved = artifacts().join("web-page.png");
    std::fs::write(&saved, screenshot).unwrap();
    println!("screenshot of the finished crawl: {}", saved.display());

    // A URL the crawler cannot use is refused in words.
    let url = browser.find(Locator::Id("url")).await.unwrap();
    url.clear().await.unwrap();
    url.send_keys("ftp://files.example/").await.unwrap();
    browser
        .find(Locator::Id("crawl"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refused = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(".job .error"))
        .await
        .expect("the refusal is shown");
    let words = refused.text().await.unwrap();
    assert!(
        words.starts_with("Only http and https URLs can be crawled."),
        "{words}"
    );

    browser.close().await.unwrap();
    // The token never travelled in a URL, so no log line holds it.
    assert_eq!(cluster.gateway.count_log(&token), 0);
    cluster.cleanup().await;
}
