package dist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// The rendezvous hands a small blob (the NCCL unique id) from rank 0 to every other rank over
// TCP, as torch's env:// rendezvous does: rank 0 listens on MASTER_PORT, the others dial
// MASTER_ADDR:MASTER_PORT until it answers or the timeout passes.
//
// Wire format (big-endian): a rank sends "PRLNGRDV", version (uint32 = 1), its rank, the world
// size it was told, the tag's length and the tag (uint32 each, then bytes). Rank 0 answers
// status (uint32: 0 ok, 1 error), a length and the blob or an error message. Rank 0 returns
// once every rank 1..size-1 has been served once.
const (
	rdvMagic   = "PRLNGRDV"
	rdvVersion = 1
	rdvMaxBlob = 1 << 20
)

// ShareFromRank0 gives every rank rank 0's blob. Rank 0 serves it at l.MasterPort (all
// interfaces); the others fetch it from l.MasterAddr:l.MasterPort. tag names what is shared
// (e.g. "nccl-unique-id"): a rank asking for another tag is refused. Errors name the address,
// the rank and the launcher's variables.
func ShareFromRank0(l Launch, tag string, blob []byte, timeout time.Duration) ([]byte, error) {
	if l.Size <= 1 {
		return blob, nil
	}
	if l.MasterAddr == "" || l.MasterPort == 0 {
		return nil, fmt.Errorf("dist: rank %d of %d needs MASTER_ADDR and MASTER_PORT to meet rank 0 (set them as torchrun does, or launch with mpirun)", l.Rank, l.Size)
	}
	deadline := time.Now().Add(timeout)
	if l.Rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(l.MasterPort)))
		if err != nil {
			return nil, fmt.Errorf("dist: rank 0 cannot listen on MASTER_PORT=%d: %w", l.MasterPort, err)
		}
		defer ln.Close()
		return blob, serveBlob(ln, l.Size, tag, blob, deadline)
	}
	return fetchBlob(net.JoinHostPort(l.MasterAddr, strconv.Itoa(l.MasterPort)), l.Rank, l.Size, tag, deadline)
}

// serveBlob answers size-1 distinct ranks on ln with blob, or fails at deadline.
func serveBlob(ln net.Listener, size int, tag string, blob []byte, deadline time.Time) error {
	served := map[int]bool{}
	if tl, ok := ln.(*net.TCPListener); ok {
		tl.SetDeadline(deadline)
	}
	for len(served) < size-1 {
		conn, err := ln.Accept()
		if err != nil {
			var missing []int
			for r := 1; r < size; r++ {
				if !served[r] {
					missing = append(missing, r)
				}
			}
			if errors.Is(err, net.ErrClosed) || isTimeout(err) {
				return fmt.Errorf("dist: rank 0 at %v: %w: ranks %v never asked for the %s", ln.Addr(), ErrTimeout, missing, tag)
			}
			return fmt.Errorf("dist: rank 0 at %v: accept: %w", ln.Addr(), err)
		}
		rank, err := answer(conn, size, tag, blob, served, deadline)
		conn.Close()
		if err == nil {
			served[rank] = true
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// answer reads one request and replies: the blob, or why not.
func answer(conn net.Conn, size int, tag string, blob []byte, served map[int]bool, deadline time.Time) (int, error) {
	d := time.Now().Add(10 * time.Second) // one slow or silent client does not hold up the rest
	if deadline.Before(d) {
		d = deadline
	}
	conn.SetDeadline(d)
	var hdr struct {
		Magic                       [8]byte
		Version, Rank, Size, TagLen uint32
	}
	if err := binary.Read(conn, binary.BigEndian, &hdr); err != nil {
		return 0, err
	}
	if string(hdr.Magic[:]) != rdvMagic || hdr.Version != rdvVersion || hdr.TagLen > 256 {
		return 0, errors.New("not a rendezvous request") // a port scanner or another program: no reply
	}
	t := make([]byte, hdr.TagLen)
	if _, err := io.ReadFull(conn, t); err != nil {
		return 0, err
	}
	reply := func(status uint32, b []byte) error {
		out := binary.BigEndian.AppendUint32(nil, status)
		out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
		_, err := conn.Write(append(out, b...))
		return err
	}
	var why string
	switch r := int(hdr.Rank); {
	case string(t) != tag:
		why = fmt.Sprintf("rank 0 serves the %s, not the %s", tag, t)
	case int(hdr.Size) != size:
		why = fmt.Sprintf("rank 0 was told the world has %d ranks, rank %d was told %d: check WORLD_SIZE on every node", size, r, hdr.Size)
	case r < 1 || r >= size:
		why = fmt.Sprintf("rank %d is outside 1..%d", r, size-1)
	case served[r]:
		why = fmt.Sprintf("rank %d already asked: two processes claim RANK=%d", r, r)
	}
	if why != "" {
		reply(1, []byte(why))
		return 0, errors.New(why)
	}
	return int(hdr.Rank), reply(0, blob)
}

// fetchBlob dials addr until rank 0 answers, then returns its blob.
func fetchBlob(addr string, rank, size int, tag string, deadline time.Time) ([]byte, error) {
	wait := 50 * time.Millisecond
	var last error
	for {
		b, retry, err := fetchOnce(addr, rank, size, tag, deadline)
		if err == nil || !retry {
			return b, err
		}
		last = err
		if time.Now().Add(wait).After(deadline) {
			return nil, fmt.Errorf("dist: rank %d: %w: rank 0 did not answer at MASTER_ADDR:MASTER_PORT = %s: %v", rank, ErrTimeout, addr, last)
		}
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

// fetchOnce makes one attempt; retry says whether a later attempt may succeed.
func fetchOnce(addr string, rank, size int, tag string, deadline time.Time) ([]byte, bool, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, true, err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	req := []byte(rdvMagic)
	for _, v := range []uint32{rdvVersion, uint32(rank), uint32(size), uint32(len(tag))} {
		req = binary.BigEndian.AppendUint32(req, v)
	}
	if _, err := conn.Write(append(req, tag...)); err != nil {
		return nil, true, err
	}
	var rep [8]byte
	if _, err := io.ReadFull(conn, rep[:]); err != nil {
		return nil, true, err
	}
	status, n := binary.BigEndian.Uint32(rep[:4]), binary.BigEndian.Uint32(rep[4:])
	if n > rdvMaxBlob {
		return nil, false, fmt.Errorf("dist: rank %d: %s answered a %d-byte %s (not a rendezvous?)", rank, addr, n, tag)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(conn, b); err != nil {
		return nil, true, err
	}
	if status != 0 {
		return nil, false, fmt.Errorf("dist: rank %d: rank 0 at %s refused: %s", rank, addr, b)
	}
	return b, false, nil
}
