// Command check validates the manifests of deploy/kubernetes without a
// cluster (run by scripts/check-deploy):
//
//   - every document decodes strictly into its Kubernetes API type
//     (k8s.io/api): an unknown or misspelt field, or a value of the wrong
//     type, is an error naming the file and the document;
//   - what the API server would refuse or what would not run: a selector
//     that does not match its pod template's labels, a container without
//     an image, a volume mount or a probe port that names nothing, a
//     ConfigMap key mounted that does not exist;
//   - what logpipe needs: logagent's /var/log mounted read-only, its data
//     dir on a hostPath (the WAL survives the pod), its host id from the
//     node's name, the grace period above the shutdown grace.
//
// It writes each ConfigMap's files and each container's plain env values
// under OUT (OUT/<configmap>/<key>, OUT/<configmap>.env), so the binaries'
// --check-config can read them.
//
//	go run . DIR OUT
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

type doc struct {
	file string
	n    int
	kind string
	raw  []byte
}

func (d doc) String() string { return fmt.Sprintf("%s (document %d, %s)", d.file, d.n, d.kind) }

func split(file string, data []byte) []doc {
	var out []doc
	for i, part := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(part)) == 0 {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		_ = yaml.Unmarshal(part, &head)
		out = append(out, doc{file, i + 1, head.Kind, part})
	}
	return out
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: check DIR OUT")
		os.Exit(2)
	}
	dir, out := os.Args[1], os.Args[2]
	var p problems
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	sort.Strings(files)
	configMaps := map[string]*corev1.ConfigMap{}
	var pods []podOf
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			p.add("%s: %v", f, err)
			continue
		}
		for _, d := range split(filepath.Base(f), data) {
			switch d.kind {
			case "Kustomization":
				checkKustomization(&p, dir, d)
			case "Namespace":
				strict(&p, d, &corev1.Namespace{})
			case "Service":
				strict(&p, d, &corev1.Service{})
			case "ConfigMap":
				var cm corev1.ConfigMap
				if strict(&p, d, &cm) {
					configMaps[cm.Name] = &cm
				}
			case "DaemonSet":
				var ds appsv1.DaemonSet
				if strict(&p, d, &ds) {
					pods = append(pods, podOf{d, ds.Name, ds.Spec.Selector.MatchLabels, ds.Spec.Template})
				}
			case "Deployment":
				var dep appsv1.Deployment
				if strict(&p, d, &dep) {
					pods = append(pods, podOf{d, dep.Name, dep.Spec.Selector.MatchLabels, dep.Spec.Template})
				}
			default:
				p.add("%s: kind %q is not checked by this program", d, d.kind)
			}
		}
	}
	for _, po := range pods {
		checkPod(&p, po, configMaps, out)
	}
	if len(p) > 0 {
		for _, m := range p {
			fmt.Fprintln(os.Stderr, "check-kubernetes:", m)
		}
		os.Exit(1)
	}
	fmt.Printf("check-kubernetes: %d files, %d workloads, %d ConfigMaps: valid\n", len(files), len(pods), len(configMaps))
}

// strict decodes d into v, refusing unknown fields.
func strict(p *problems, d doc, v any) bool {
	if err := yaml.UnmarshalStrict(d.raw, v); err != nil {
		p.add("%s: %v", d, err)
		return false
	}
	return true
}

func checkKustomization(p *problems, dir string, d doc) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
	}
	if !strict(p, d, &k) {
		return
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
			p.add("%s: resource %s: %v", d, r, err)
		}
	}
}

type podOf struct {
	d        doc
	name     string
	selector map[string]string
	tmpl     corev1.PodTemplateSpec
}

func checkPod(p *problems, po podOf, cms map[string]*corev1.ConfigMap, out string) {
	at := fmt.Sprintf("%s %s", po.d, po.name)
	if len(po.selector) == 0 {
		p.add("%s: empty selector", at)
	}
	for k, v := range po.selector {
		if po.tmpl.Labels[k] != v {
			p.add("%s: selector %s=%s does not match the pod template's labels", at, k, v)
		}
	}
	spec := po.tmpl.Spec
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil {
			cm, ok := cms[v.ConfigMap.Name]
			if !ok {
				p.add("%s: volume %s: no ConfigMap %s", at, v.Name, v.ConfigMap.Name)
				continue
			}
			dst := filepath.Join(out, cm.Name)
			if err := os.MkdirAll(dst, 0o755); err != nil {
				p.add("%s: %v", at, err)
			}
			for key, text := range cm.Data {
				if err := os.WriteFile(filepath.Join(dst, key), []byte(text), 0o644); err != nil {
					p.add("%s: %v", at, err)
				}
			}
		}
	}
	if len(spec.Containers) == 0 {
		p.add("%s: no containers", at)
	}
	for _, c := range spec.Containers {
		cat := fmt.Sprintf("%s container %s", at, c.Name)
		if c.Image == "" {
			p.add("%s: no image", cat)
		}
		ports := map[string]bool{}
		for _, port := range c.Ports {
			ports[port.Name] = true
		}
		for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if probe == nil {
				continue
			}
			if probe.TCPSocket != nil && probe.TCPSocket.Port.StrVal != "" && !ports[probe.TCPSocket.Port.StrVal] {
				p.add("%s: probe port %s names no container port", cat, probe.TCPSocket.Port.StrVal)
			}
			if probe.HTTPGet != nil && probe.HTTPGet.Port.StrVal != "" && !ports[probe.HTTPGet.Port.StrVal] {
				p.add("%s: probe port %s names no container port", cat, probe.HTTPGet.Port.StrVal)
			}
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m
			if _, ok := volumes[m.Name]; !ok {
				p.add("%s: volume mount %s names no volume", cat, m.Name)
			}
		}
		// The config file the args name is in a mounted ConfigMap.
		for i, a := range c.Args {
			if a == "--config" && i+1 < len(c.Args) {
				path := c.Args[i+1]
				m, ok := mounts[filepath.Dir(path)]
				if !ok || volumes[m.Name].ConfigMap == nil {
					p.add("%s: --config %s is not in a mounted ConfigMap", cat, path)
				} else if cm := cms[volumes[m.Name].ConfigMap.Name]; cm != nil {
					if _, ok := cm.Data[filepath.Base(path)]; !ok {
						p.add("%s: ConfigMap %s has no key %s", cat, cm.Name, filepath.Base(path))
					}
				}
			}
		}
		var env []string
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				env = append(env, e.Name+"="+e.Value)
			}
		}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				_ = os.WriteFile(filepath.Join(out, v.ConfigMap.Name+".env"), []byte(strings.Join(env, "\n")+"\n"), 0o644)
			}
		}
		if po.name == "logagent" {
			checkAgent(p, cat, spec, c, volumes, mounts)
		}
	}
}

func checkAgent(p *problems, at string, spec corev1.PodSpec, c corev1.Container, volumes map[string]corev1.Volume, mounts map[string]corev1.VolumeMount) {
	if m, ok := mounts["/var/log"]; !ok || !m.ReadOnly || volumes[m.Name].HostPath == nil {
		p.add("%s: /var/log must be the node's, read-only (hostPath)", at)
	}
	if m, ok := mounts["/var/lib/logagent"]; !ok || volumes[m.Name].HostPath == nil {
		p.add("%s: the data dir /var/lib/logagent must be on a hostPath (the WAL outlives the pod)", at)
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "LOGAGENT_HOST_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		p.add("%s: LOGAGENT_HOST_ID must come from spec.nodeName", at)
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= 10 {
		p.add("%s: terminationGracePeriodSeconds must exceed the shutdown grace (10 s)", at)
	}
}
