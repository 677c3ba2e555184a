package h2

// ring is a FIFO queue that reuses its memory: push and pop allocate nothing
// once it has grown to its working size.
type ring[T any] struct {
	buf     []T
	head, n int
}

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		nb := make([]T, max(8, 2*len(r.buf)))
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) pop() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return v
}

// each calls f on every element, oldest first.
func (r *ring[T]) each(f func(T)) {
	for i := 0; i < r.n; i++ {
		f(r.buf[(r.head+i)%len(r.buf)])
	}
}
