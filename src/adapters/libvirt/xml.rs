//! Small, tolerant extraction from libvirt's domain XML: the disks under
//! `<devices>` and the text of the `<virtpool:pool>` metadata element.
//!
//! libvirt writes its own XML in a regular shape (no CDATA, no comments in
//! `<devices>`, attributes quoted), so plain string scanning is enough and
//! avoids an XML dependency. Anything unexpected yields "nothing found"
//! rather than an error.

/// The virtpool metadata namespace.
pub const POOL_NS: &str = "https://virtpool.dev/xmlns/pool/1";

/// Namespace prefix used when the agent writes metadata.
pub const POOL_PREFIX: &str = "virtpool";

/// A `<disk>` of the domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskXml {
    /// `<target dev=...>`.
    pub target: String,
    /// `device` attribute (libvirt's default is `disk`).
    pub device: String,
    /// Has `<readonly/>`.
    pub readonly: bool,
}

/// Disks under `<devices>` that have a target, in document order.
pub fn disks(domain_xml: &str) -> Vec<DiskXml> {
    let devices = match section(domain_xml, "devices") {
        Some(d) => d,
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut rest = devices;
    while let Some((start_tag, body, after)) = next_element(rest, "disk") {
        rest = after;
        let device = attr(start_tag, "device").unwrap_or_else(|| "disk".to_owned());
        let target = next_element(body, "target").and_then(|(tag, _, _)| attr(tag, "dev"));
        let readonly = next_element(body, "readonly").is_some();
        if let Some(target) = target {
            out.push(DiskXml {
                target,
                device,
                readonly,
            });
        }
    }
    out
}

/// Whether the domain has a memory balloon device: false only for an
/// explicit `<memballoon model='none'/>` (without the element, libvirt's
/// QEMU driver adds a virtio balloon; the test driver has no devices to
/// speak of and takes balloon targets).
pub fn has_balloon(domain_xml: &str) -> bool {
    let Some(devices) = section(domain_xml, "devices") else {
        return true;
    };
    match next_element(devices, "memballoon") {
        Some((tag, _, _)) => attr(tag, "model").as_deref() != Some("none"),
        None => true,
    }
}

/// The pool name from the text of a metadata element as returned by
/// `virDomainGetMetadata(ELEMENT)`, e.g.
/// `<virtpool:pool xmlns:virtpool="...">gold</virtpool:pool>`.
/// `None` when empty or malformed.
pub fn element_text(element_xml: &str) -> Option<String> {
    let s = element_xml.trim();
    if !s.starts_with('<') {
        return None;
    }
    let open_end = s.find('>')?;
    if s[..open_end].ends_with('/') {
        return None;
    }
    let body = &s[open_end + 1..];
    let close = body.rfind("</")?;
    let text = unescape(body[..close].trim());
    if text.is_empty() || text.contains('<') {
        None
    } else {
        Some(text)
    }
}

/// Fallback: finds `<PREFIX:pool>` in the `<metadata>` of a full domain XML
/// where PREFIX is bound to [`POOL_NS`], and returns its text.
pub fn metadata_pool(domain_xml: &str) -> Option<String> {
    let meta = section(domain_xml, "metadata")?;
    let mut rest = meta;
    // Any element whose local name is `pool` and that declares (or sits under
    // a parent that declares) the namespace. libvirt stores each metadata
    // element with its own xmlns declaration, so checking the start tag is
    // enough in practice.
    while let Some(pos) = rest.find('<') {
        let tail = &rest[pos + 1..];
        let name_end = tail
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(tail.len());
        let name = &tail[..name_end];
        let tag_end = tail.find('>').map_or(tail.len(), |e| e + 1);
        let start_tag = &tail[..tag_end];
        let (prefix, local) = match name.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, name),
        };
        if local == "pool" {
            let ns_attr = match prefix {
                Some(p) => format!("xmlns:{p}"),
                None => "xmlns".to_owned(),
            };
            if attr(start_tag, &ns_attr).as_deref() == Some(POOL_NS) {
                let close = format!("</{name}>");
                let body_start = pos + 1 + tag_end;
                let end = rest[body_start..].find(&close)?;
                let element = &rest[pos..body_start + end + close.len()];
                return element_text(element);
            }
        }
        rest = &tail[tag_end.min(tail.len())..];
    }
    None
}

/// The inner text of the first `<name>...</name>` (top-level enough for
/// `devices` and `metadata`, which appear once in a domain).
fn section<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let (_, body, _) = next_element(xml, name)?;
    Some(body)
}

/// Finds the next element named exactly `name` (no prefix). Returns its
/// start tag (without `<` and `>`), its body (empty when self-closing) and
/// the text after it.
fn next_element<'a>(xml: &'a str, name: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let open = format!("<{name}");
    let mut from = 0;
    loop {
        let pos = from + xml[from..].find(&open)?;
        let after_name = pos + open.len();
        let next = xml[after_name..].chars().next()?;
        if !(next.is_whitespace() || next == '>' || next == '/') {
            from = after_name;
            continue;
        }
        let tag_end = after_name + find_tag_end(&xml[after_name..])?;
        let start_tag = &xml[pos + 1..tag_end];
        if let Some(start_tag) = start_tag.strip_suffix('/') {
            return Some((start_tag, "", &xml[tag_end + 1..]));
        }
        let close = format!("</{name}>");
        let body_start = tag_end + 1;
        let body_end = body_start + xml[body_start..].find(&close)?;
        return Some((
            start_tag,
            &xml[body_start..body_end],
            &xml[body_end + close.len()..],
        ));
    }
}

/// Index of the `>` closing a start tag, skipping quoted attribute values.
fn find_tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '>' => return Some(i),
            None => {}
        }
    }
    None
}

/// Value of attribute `name` in a start tag, unescaped.
fn attr(start_tag: &str, name: &str) -> Option<String> {
    let mut rest = start_tag;
    loop {
        let pos = rest.find(name)?;
        let before_ok = pos == 0
            || rest[..pos]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace);
        let after = rest[pos + name.len()..].trim_start();
        if before_ok {
            if let Some(after_eq) = after.strip_prefix('=') {
                let after_eq = after_eq.trim_start();
                let quote = after_eq.chars().next()?;
                if quote == '"' || quote == '\'' {
                    let value = &after_eq[1..];
                    let end = value.find(quote)?;
                    return Some(unescape(&value[..end]));
                }
                return None;
            }
        }
        rest = &rest[pos + name.len()..];
    }
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balloon_device_unless_model_none() {
        let with = |dev: &str| format!("<domain><devices>{dev}</devices></domain>");
        assert!(has_balloon(&with(
            "<memballoon model='virtio'><stats period='5'/></memballoon>"
        )));
        assert!(has_balloon(&with("<disk device='disk'/>")));
        assert!(!has_balloon(&with("<memballoon model='none'/>")));
        assert!(!has_balloon(&with(
            "<memballoon model=\"none\"></memballoon>"
        )));
        assert!(has_balloon("<domain/>"));
    }

    const DOMAIN: &str = r#"<domain type='kvm' id='3'>
  <name>web-1</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <metadata>
    <other:thing xmlns:other="http://example.com/other"><disk>not a disk</disk></other:thing>
    <virtpool:pool xmlns:virtpool="https://virtpool.dev/xmlns/pool/1">gold &amp; silver</virtpool:pool>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <iotune>
        <total_bytes_sec>1000</total_bytes_sec>
      </iotune>
    </disk>
    <disk type="file" device="cdrom">
      <source file="/iso/x&gt;y.iso"/>
      <target dev="sda" bus="sata"/>
      <readonly/>
    </disk>
    <disk type='block'>
      <source dev='/dev/sdb'/>
      <target dev='vdb' bus='virtio'/>
      <readonly />
    </disk>
    <disk type='file' device='floppy'/>
    <disks-not>nope</disks-not>
    <interface type='network'><target dev='vnet0'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn extracts_disks_in_order() {
        let d = disks(DOMAIN);
        assert_eq!(
            d,
            vec![
                DiskXml {
                    target: "vda".into(),
                    device: "disk".into(),
                    readonly: false
                },
                DiskXml {
                    target: "sda".into(),
                    device: "cdrom".into(),
                    readonly: true
                },
                DiskXml {
                    target: "vdb".into(),
                    device: "disk".into(),
                    readonly: true
                },
            ]
        );
    }

    #[test]
    fn no_devices_no_disks() {
        assert!(disks("<domain><name>x</name></domain>").is_empty());
        assert!(disks("").is_empty());
        assert!(disks("<domain><devices><disk device='disk'>").is_empty());
    }

    #[test]
    fn metadata_from_full_xml() {
        assert_eq!(metadata_pool(DOMAIN).as_deref(), Some("gold & silver"));
    }

    #[test]
    fn metadata_needs_the_namespace() {
        let xml = r#"<domain><metadata>
            <x:pool xmlns:x="https://elsewhere.example/ns">bad</x:pool>
            <p:pool xmlns:p="https://virtpool.dev/xmlns/pool/1">good</p:pool>
        </metadata></domain>"#;
        assert_eq!(metadata_pool(xml).as_deref(), Some("good"));
        let none = r#"<domain><metadata><x:pool xmlns:x="https://e.example">bad</x:pool></metadata></domain>"#;
        assert_eq!(metadata_pool(none), None);
        assert_eq!(metadata_pool("<domain/>"), None);
    }

    #[test]
    fn element_text_variants() {
        assert_eq!(
            element_text(
                "<virtpool:pool xmlns:virtpool=\"https://virtpool.dev/xmlns/pool/1\">gold</virtpool:pool>\n"
            )
            .as_deref(),
            Some("gold")
        );
        assert_eq!(
            element_text("<pool xmlns='x'>  web  </pool>").as_deref(),
            Some("web")
        );
        assert_eq!(element_text("<pool xmlns='x'/>"), None);
        assert_eq!(element_text("<pool></pool>"), None);
        assert_eq!(element_text("<pool><a>b</a></pool>"), None);
        assert_eq!(element_text("gold"), None);
    }

    #[test]
    fn attr_quotes_and_prefix_names() {
        assert_eq!(
            attr("disk type='file' device='cdrom'", "device").as_deref(),
            Some("cdrom")
        );
        assert_eq!(
            attr("disk xdevice='a' device=\"b\"", "device").as_deref(),
            Some("b")
        );
        assert_eq!(attr("disk type='file'", "device"), None);
    }
}
