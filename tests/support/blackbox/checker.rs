//! The checker: a second libvirt connection to the agent's libvirtd that
//! reads what the host really has (virt crate calls, not the agent's code).

use super::fleet::{DomSpec, Init};
use super::{MIB, POOL_NS};
use virt::connect::Connect;
use virt::domain::Domain;
use virtpool::core::model::{DomainObs, DomainState};
use virtpool::core::planner::testing;

/// What the host really has for one domain, read from the checker's own
/// connection (virt crate calls, not the agent's code).
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub vcpus: u64,
    pub vcpus_max: u64,
    /// Bytes.
    pub memory: u64,
    pub memory_max: u64,
    /// Guest used memory from the balloon stats (available − usable), bytes.
    pub used: Option<u64>,
    pub metadata_pool: Option<String>,
}

impl Live {
    /// A minimal observation for membership (the planner's fixture
    /// [`testing::domain`] with what the checker read).
    pub fn as_obs(&self) -> DomainObs {
        DomainObs {
            uuid: self.uuid.as_str().into(),
            id: None,
            state: self.state,
            vcpus: self.vcpus,
            vcpus_max: self.vcpus_max,
            memory: self.memory,
            memory_max: self.memory_max,
            active_secs: None,
            ..testing::domain(&self.name, self.metadata_pool.as_deref())
        }
    }
}

/// The checker's connection to the same libvirtd.
pub struct Host2 {
    pub uri: String,
    conn: Option<Connect>,
}

fn map_state(d: &Domain) -> DomainState {
    use virt::domain::DomainState as S;
    let (s, _) = d.state().unwrap();
    if s.is(S::Running) {
        DomainState::Running
    } else if s.is(S::Paused) {
        DomainState::Paused
    } else if s.is(S::Shutoff) {
        DomainState::Shutoff
    } else {
        DomainState::Other
    }
}

impl Host2 {
    pub fn open(uri: &str) -> Host2 {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).unwrap();
        Host2 {
            uri: uri.to_string(),
            conn: Some(conn),
        }
    }

    pub fn conn(&self) -> &Connect {
        self.conn.as_ref().unwrap()
    }

    /// After the daemon died: forget the dead connection (leaked: closing a
    /// dead remote connection must not be able to panic a test) and open a
    /// new one.
    pub fn reopen(&mut self) {
        if let Some(c) = self.conn.take() {
            std::mem::forget(c);
        }
        self.conn = Some(Connect::open(Some(&self.uri)).unwrap());
    }

    pub fn define(&self, xml: &str) {
        self.conn()
            .define_domain_xml(xml)
            .unwrap_or_else(|e| panic!("define: {e}\n{xml}"));
    }

    pub fn dom(&self, name: &str) -> Domain {
        self.conn()
            .lookup_domain_by_name(name)
            .unwrap_or_else(|e| panic!("lookup {name}: {e}"))
    }

    pub fn start(&self, name: &str) {
        self.dom(name).create().unwrap();
    }
    pub fn suspend(&self, name: &str) {
        self.dom(name).suspend().unwrap();
    }
    pub fn resume(&self, name: &str) {
        self.dom(name).resume().unwrap();
    }
    pub fn destroy(&self, name: &str) {
        self.dom(name).destroy().unwrap();
    }
    pub fn undefine(&self, name: &str) {
        self.dom(name).undefine().unwrap();
    }

    /// Sets live vCPUs and memory behind the agent's back.
    pub fn set_live(&self, name: &str, vcpus: u64, memory: u64) {
        let d = self.dom(name);
        d.set_vcpus_flags(vcpus as u32, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
            .unwrap();
        d.set_memory_flags(memory / 1024, virt::sys::VIR_DOMAIN_MEM_LIVE)
            .unwrap();
    }

    fn read(d: &Domain) -> Live {
        let name = d.name().unwrap();
        let uuid = d.uuid_string().unwrap();
        let state = map_state(d);
        let info = d.info().unwrap();
        let active = state.is_active();
        let vcpus = if active {
            u64::from(d.vcpus_flags(virt::sys::VIR_DOMAIN_AFFECT_LIVE).unwrap())
        } else {
            0
        };
        let vcpus_max = u64::from(d.vcpus_flags(virt::sys::VIR_DOMAIN_VCPU_MAXIMUM).unwrap());
        let used = if active {
            let st = d.memory_stats(0).unwrap();
            let get = |t| st.iter().find(|s| s.tag == t).map(|s| s.val * 1024);
            match (
                get(virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE),
                get(virt::sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
            ) {
                (Some(a), Some(u)) => Some(a.saturating_sub(u)),
                _ => None,
            }
        } else {
            None
        };
        let metadata_pool = d
            .metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(POOL_NS),
                0,
            )
            .ok()
            .and_then(|x| {
                let s = x.find('>')? + 1;
                let e = x.rfind("</")?;
                Some(x[s..e].trim().to_string())
            });
        Live {
            name,
            uuid,
            state,
            vcpus,
            vcpus_max,
            memory: info.memory * 1024,
            memory_max: info.max_mem * 1024,
            used,
            metadata_pool,
        }
    }

    /// Target names of a domain's writable `device='disk'` disks, from its XML.
    pub fn disks(&self, name: &str) -> Vec<String> {
        let xml = self.dom(name).xml_desc(0).unwrap();
        xml.split("<disk ")
            .skip(1)
            .filter(|d| d.contains("device='disk'") || d.contains("device=\"disk\""))
            .filter(|d| !d[..d.find("</disk>").unwrap_or(d.len())].contains("<readonly"))
            .filter_map(|d| {
                let i = d.find("<target dev=")? + "<target dev=".len() + 1;
                let j = d[i..].find(['\'', '"'])?;
                Some(d[i..i + j].to_string())
            })
            .collect()
    }

    /// Live block I/O limits of one disk (own connection; `virDomainGetBlockIoTune`).
    pub fn iotune(&self, name: &str, disk: &str) -> virtpool::core::model::IoTune {
        virtpool::adapters::libvirt::ffi::get_block_iotune(&self.dom(name), disk, 0)
            .unwrap_or_else(|e| panic!("{name} {disk}: {e}"))
    }

    pub fn live(&self, name: &str) -> Option<Live> {
        self.conn()
            .lookup_domain_by_name(name)
            .ok()
            .map(|d| Self::read(&d))
    }

    pub fn get(&self, name: &str) -> Live {
        self.live(name)
            .unwrap_or_else(|| panic!("no domain {name}"))
    }

    /// Every domain, sorted by name.
    pub fn all(&self) -> Vec<Live> {
        let mut v: Vec<Live> = self
            .conn()
            .list_all_domains(0)
            .unwrap()
            .iter()
            .map(Self::read)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Defines every fixture domain and brings it to its initial state.
    pub fn define_fleet(&self, fleet: &[DomSpec]) {
        for d in fleet {
            self.define(&d.xml());
            match d.state {
                Init::Running => self.start(&d.name),
                Init::Paused => {
                    self.start(&d.name);
                    self.suspend(&d.name);
                }
                Init::Off => {}
            }
        }
    }
}
